"""The haproxy executable: where it is, and whether it takes a config (`haproxy -c`) before anything runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from deploy.gateway.errors import GatewayError
from deploy.gateway.tokens import scrub


def find_haproxy(explicit: str | None = None) -> str:
    """`explicit` (DEPLOY_HAPROXY), else `haproxy` on PATH, else /usr/sbin/haproxy (Debian puts it outside a user's
    PATH)."""
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise GatewayError(f"DEPLOY_HAPROXY={explicit} is not an executable file")
        return explicit
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
    if not found:
        raise GatewayError(
            "haproxy not found: install it (Debian/Ubuntu: `apt-get install haproxy`) or set DEPLOY_HAPROXY=/path"
        )
    return found


def validate(haproxy: str, config: Path, secrets_: Sequence[str]) -> None:
    """Refuse a config HAProxy would refuse, with its first alert lines scrubbed of the tokens the config holds."""
    res = subprocess.run([haproxy, "-c", "-q", "-f", str(config)], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if "ALERT" in ln] or res.stderr.splitlines()
        raise GatewayError(f"haproxy refused the generated config: {scrub(' | '.join(lines[:3]), secrets_)}")
