"""The gateway's one exception type, shared by the modules that drive HAProxy."""

from __future__ import annotations

from deploy.errors import DeployError


class GatewayError(DeployError):
    """HAProxy is missing, refused the config, or did not start, reload or stop as asked."""
