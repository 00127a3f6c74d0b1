"""The gateway's secrets: the token its clients present, and keeping every token (the client's and each replica's)
out of the messages HAProxy's own error lines end up in."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from deploy.secrets.tokens import read_token_file, token_path, write_token


def client_token(home: Path, fleet: str) -> tuple[Path, str]:
    """The token clients present to the gateway: DEPLOY_HOME/tokens/gateway-<fleet>.token (0600), made once."""
    path = token_path(home, f"gateway-{fleet}")
    if not path.exists():
        write_token(path, exclusive=True)
    os.chmod(path, 0o600)
    return path, read_token_file(path)


def scrub(text: str, secrets_: Sequence[str]) -> str:
    """`text` with every secret replaced by ***, for an error message."""
    for s in secrets_:
        if s:
            text = text.replace(s, "***")
    return text
