"""csm-deploy control plane: rents GPUs, pushes the runtime, tracks every rental. Never imports torch."""

__version__ = "0.1.0"
