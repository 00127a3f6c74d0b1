"""Where a rental's runtime answers, and the token that opens it: written to the ledger by the `ready` step, read by
`deploy generate ID`.

The ledger row's meta holds `endpoint` (the URL as seen on the box), `access` (`direct`: reachable as is;
`ssh-tunnel`: bound to the box's loopback, reached through SSH), `port` (the server's port on the box) and
`token_file` (a path under DEPLOY_HOME, mode 0600) with `token_sha256`. The token itself is never in the ledger.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from deploy.errors import UsageError

DIRECT, TUNNEL = "direct", "ssh-tunnel"


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


def new_token(home: Path, rental_id: int) -> tuple[Path, str]:
    """A fresh bearer token in DEPLOY_HOME/tokens/rental-<id>.token (0600, dir 0700); returns (path, sha256)."""
    path = token_path(home, f"rental-{rental_id}")
    token = write_token(path)
    return path, hashlib.sha256(token.encode()).hexdigest()


@contextlib.contextmanager
def open_rental_endpoint(rental_id: str, settings) -> Iterator[tuple[str, str | None]]:
    """Rental ID -> (URL usable from here, token file), with an SSH tunnel held open for the block when needed."""
    from deploy.ledger import open_ledger

    with open_ledger(settings) as ledger:
        rental = ledger.require(rental_id)
        rid, meta = rental.id, rental.meta
        if not meta.get("endpoint"):
            raise UsageError(f"rental {rid} has no recorded endpoint (status {rental.status}); pass --endpoint URL")
        if not rental.is_open:
            raise UsageError(f"rental {rid} is {rental.status}: its server is gone (see `deploy status`)")
        token_file = meta.get("token_file")
        if meta.get("access") != TUNNEL:
            yield str(meta["endpoint"]), token_file
            return
        from deploy.providers import host_for

        host = host_for(rental, settings, ledger)
        try:
            with tunnel(host, int(meta["port"])) as local_port:
                yield f"http://127.0.0.1:{local_port}", token_file
        finally:
            host.close()


@contextlib.contextmanager
def tunnel(host, remote_port: int, local_port: int | None = None) -> Iterator[int]:
    """host.forward_port, minus one Fabric habit: a forwarded connection the box refused re-raises on exit as a
    ThreadException, which would replace the block's own outcome. What the block saw (an HTTP error) is what counts."""
    from invoke.exceptions import ThreadException

    manager = host.forward_port(remote_port, local_port)
    local_port = manager.__enter__()
    try:
        yield local_port
    except BaseException:
        with contextlib.suppress(ThreadException):
            manager.__exit__(None, None, None)
        raise
    with contextlib.suppress(ThreadException):
        manager.__exit__(None, None, None)
