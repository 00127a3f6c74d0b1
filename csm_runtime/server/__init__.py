"""The runtime's HTTP API (FastAPI). `create_app(settings)` builds it; importing loads no model.

app.py wires the routers (routers/, one per API surface), the bearer token (dependencies.py), errors, metrics and the
voice table; scheduler.py is the one thread that owns the generator; schemas.py and audio_formats.py are the request
and response bodies.
"""

from csm_runtime.server.app import create_app

__all__ = ["create_app"]
