"""csm-deploy data plane: CSM-1B streaming generation and its HTTP server. Runs on the rented box."""

__version__ = "0.1.0"
