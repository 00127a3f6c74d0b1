"""Where a rental's runtime answers: written to the ledger by the `ready` step, read by `deploy generate ID`.

The ledger row holds (`Rental.server`, deploy/ledger/records.py) `endpoint` (the URL as seen on the box: https when the server binds a public address),
`access` (`direct`: reachable as is; `ssh-tunnel`: reached through SSH), `port` (the server's port on the box),
`token_file` (a path under DEPLOY_HOME, mode 0600) with `token_sha256`, and for an https server `tls_cert` (the
pinned certificate, deploy/remote/tls.py). The token itself is never in the ledger.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from deploy.errors import UsageError
from deploy.ledger import Ledger, Rental, open_ledger
from deploy.ledger.records import ServerRecord
from deploy.ledger.store import DIRECT, TUNNEL
from deploy.providers import provider_for
from deploy.remote.tls import pinned
from deploy.remote.tunnels import forward

if TYPE_CHECKING:
    from deploy.remote.host import Host

__all__ = ["DIRECT", "TUNNEL", "RecordedEndpoint", "RentalEndpoint", "open_rental_endpoint", "recorded_endpoint"]

NO_RUNTIME = "provisioned with --no-runtime?"


class RentalEndpoint(NamedTuple):
    url: str  # usable from here
    token_file: str | None
    cacert: str | None  # the pinned certificate an https server must present (None: plain http)


@dataclass(frozen=True)
class RecordedEndpoint:
    """Where a rental's server answers, as its ledger row records it: used as is (`direct`), or through an SSH
    tunnel to its port on the box (`ssh-tunnel`)."""

    rental: Rental
    server: ServerRecord

    @property
    def url(self) -> str:
        return str(self.server.endpoint)

    @property
    def port(self) -> int:
        return int(self.server.port or 0)

    @property
    def tunnelled(self) -> bool:
        return self.server.tunnelled

    def local_url(self, local_port: int) -> str:
        """The URL through a tunnel that listens on `local_port` here."""
        return f"{self.server.scheme}://127.0.0.1:{local_port}"

    def box(self, settings: Any, ledger: Ledger) -> Host:
        """A connection to the rental's box, to tunnel through (the caller closes it)."""
        return provider_for(self.rental, settings).host(self.rental, settings, ledger)


def recorded_endpoint(ledger: Ledger, rental_id: int | str, *, missing: str = NO_RUNTIME) -> RecordedEndpoint:
    """The one lookup of a rental's server endpoint (`deploy generate ID`, `deploy open`, `deploy tunnel`): a usage
    error for a bad ID, a rental that ended, or one with no server recorded (`missing` says what to do then)."""
    rental = ledger.require(rental_id)
    if not rental.is_open:
        raise UsageError(f"rental {rental.id} is {rental.status}: its server is gone (see `deploy status`)")
    server = rental.server
    if not server.endpoint or (server.tunnelled and not server.port):
        raise UsageError(f"rental {rental.id} has no recorded endpoint (status {rental.status}); {missing}")
    return RecordedEndpoint(rental, server)


@contextlib.contextmanager
def open_rental_endpoint(rental_id: str, settings) -> Iterator[RentalEndpoint]:
    """Rental ID -> (URL usable from here, token file, pinned certificate), with an SSH tunnel held open for the block
    when needed."""
    with open_ledger(settings) as ledger:
        found = recorded_endpoint(ledger, rental_id, missing="pass --endpoint URL")
        token_file = found.server.token_file
        cert = pinned(found.server)
        cacert = str(cert) if cert is not None else None
        if not found.tunnelled:
            yield RentalEndpoint(found.url, token_file, cacert)
            return
        host = found.box(settings, ledger)
        try:
            with forward(host, found.port) as local_port:
                yield RentalEndpoint(found.local_url(local_port), token_file, cacert)
        finally:
            host.close()
