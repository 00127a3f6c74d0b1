"""Bearer tokens the toolkit mints (one per rental, one per fleet gateway) and reads back.

Every token lives in DEPLOY_HOME/tokens/<name>.token, mode 0600 in a 0700 directory, created 0600 before the secret
goes in. The ledger keeps only a token's sha256; logs and command lines never see it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from deploy.errors import UsageError


def token_path(home: Path, name: str) -> Path:
    """DEPLOY_HOME/tokens/<name>.token, its directory made 0700: every secret the toolkit mints lives there."""
    directory = Path(home) / "tokens"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    return directory / f"{name}.token"


def write_token(path: Path, *, exclusive: bool = False) -> str:
    """A fresh token in a file created 0600 before the secret goes in; `exclusive` refuses to replace one."""
    token = secrets.token_urlsafe(32)
    flags = os.O_CREAT | os.O_WRONLY | (os.O_EXCL if exclusive else os.O_TRUNC)
    with os.fdopen(os.open(path, flags, 0o600), "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def new_rental_token(home: Path, rental_id: int) -> tuple[Path, str]:
    """A fresh bearer token in DEPLOY_HOME/tokens/rental-<id>.token; returns (path, sha256 of the token)."""
    path = token_path(home, f"rental-{rental_id}")
    token = write_token(path)
    return path, hashlib.sha256(token.encode()).hexdigest()


def read_token_file(path: str | Path | None) -> str | None:
    """The token in a file (None when no file is named); an unreadable or empty file is a one-line UsageError."""
    if not path:
        return None
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read token file {path}: {exc.strerror}") from None
    if not token:
        raise UsageError(f"token file {path} is empty")
    return token
