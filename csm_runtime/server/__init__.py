"""The runtime's HTTP API (FastAPI). `create_app(settings)` builds it; importing loads no model."""

from csm_runtime.server.app import create_app

__all__ = ["create_app"]
