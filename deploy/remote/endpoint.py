"""Where a rental's runtime answers: written to the ledger by the `ready` step, read by `deploy generate ID`.

The ledger row's meta holds `endpoint` (the URL as seen on the box: https when the server binds a public address),
`access` (`direct`: reachable as is; `ssh-tunnel`: reached through SSH), `port` (the server's port on the box),
`token_file` (a path under DEPLOY_HOME, mode 0600) with `token_sha256`, and for an https server `tls_cert` (the
pinned certificate, deploy/remote/tls.py). The token itself is never in the ledger.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple
from urllib.parse import urlsplit

from deploy.errors import UsageError
from deploy.ledger import open_ledger
from deploy.ledger.store import DIRECT, TUNNEL
from deploy.providers import provider_for
from deploy.remote.tls import pinned
from deploy.remote.tunnels import forward

__all__ = ["DIRECT", "TUNNEL", "RentalEndpoint", "open_rental_endpoint"]


class RentalEndpoint(NamedTuple):
    url: str  # usable from here
    token_file: str | None
    cacert: str | None  # the pinned certificate an https server must present (None: plain http)


@contextlib.contextmanager
def open_rental_endpoint(rental_id: str, settings) -> Iterator[RentalEndpoint]:
    """Rental ID -> (URL usable from here, token file, pinned certificate), with an SSH tunnel held open for the block
    when needed."""
    with open_ledger(settings) as ledger:
        rental = ledger.require(rental_id)
        rid, meta = rental.id, rental.meta
        if not meta.get("endpoint"):
            raise UsageError(f"rental {rid} has no recorded endpoint (status {rental.status}); pass --endpoint URL")
        if not rental.is_open:
            raise UsageError(f"rental {rid} is {rental.status}: its server is gone (see `deploy status`)")
        token_file = meta.get("token_file")
        cert = pinned(meta)
        cacert = str(cert) if cert is not None else None
        if meta.get("access") != TUNNEL:
            yield RentalEndpoint(str(meta["endpoint"]), token_file, cacert)
            return
        scheme = urlsplit(str(meta["endpoint"])).scheme or "http"
        host = provider_for(rental, settings).host(rental, settings, ledger)
        try:
            with forward(host, int(meta["port"])) as local_port:
                yield RentalEndpoint(f"{scheme}://127.0.0.1:{local_port}", token_file, cacert)
        finally:
            host.close()
