"""The operator's Hugging Face Hub token, found the way the Hub's own tools find it, for a gated checkpoint on a box.

Order (huggingface_hub's): `--hf-token-file PATH` when given, else `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the
file `hf auth login` writes (`$HF_TOKEN_PATH`, default `$HF_HOME/token`, default `~/.cache/huggingface/token`).
What callers keep and print is `HubToken.source` (where it came from), never the value; the value goes to the box
only as a file (deploy/provision/hub.py), never into the ledger, a log, an argv or an SSH command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deploy.errors import UsageError


@dataclass(frozen=True)
class HubToken:
    source: str  # "HF_TOKEN", "--hf-token-file /path", "hf auth login (/path)": safe to log
    value: str = field(repr=False)  # never printed, not even by a debugging repr


def login_file(environ: Mapping[str, str]) -> Path:
    """Where `hf auth login` keeps the active token."""
    if environ.get("HF_TOKEN_PATH"):
        return Path(environ["HF_TOKEN_PATH"]).expanduser()
    home = environ.get("HF_HOME") or os.path.join(environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "token"


def _read(path: Path, what: str) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the Hub token file {path} ({what}): {exc.strerror}") from None
    if not token:
        raise UsageError(f"the Hub token file {path} ({what}) is empty")
    return token


def find_hub_token(token_file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> HubToken | None:
    """The token the Hub's tools would use here, or None when there is none. A named file that cannot be read is a
    one-line UsageError (a typo must not silently mean "no token")."""
    env = os.environ if environ is None else environ
    if token_file:
        path = Path(token_file).expanduser()
        return HubToken(f"--hf-token-file {path}", _read(path, "--hf-token-file"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if env.get(name, "").strip():
            return HubToken(name, env[name].strip())
    path = login_file(env)
    if path.is_file():
        return HubToken(f"hf auth login ({path})", _read(path, "hf auth login"))
    return None
