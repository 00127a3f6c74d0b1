"""How `deploy` gets into a vast box over SSH: our key by two paths, and the box by two routes.

The key. `attach ssh` is vast's way to add a key, but a create returns while `actual_status` is still null or
`loading`, and no vast source says a key attached then reaches the container when it starts. So no single path is
trusted: the onstart (which vast runs in the container on every start) appends our public key to
~/.ssh/authorized_keys itself, once, and the provider attaches the key again once the instance runs.

The route. vast lists two ways in: the box's own address (`public_ipaddr` and the host port of `22/tcp`, mapped for
a direct runtype) and vast's SSH proxy (`ssh_host:ssh_port`, e.g. ssh3.vast.ai), which reaches the same sshd.
SkyPilot's vast provisioner dials only the proxy, because the direct address times out on some hosts. We dial the
direct route first; when it has not spoken SSH within `DIRECT_ANSWER_S` (a port that hangs, or nothing listening),
the next try goes to the proxy, and the two alternate until one answers SSH; from then on that one is kept (its
probe may still wait for the onstart). The route that worked is recorded on the rental (`ssh_path`) with its address.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from deploy.errors import ProviderError
from deploy.ledger import records

if TYPE_CHECKING:
    from deploy.ledger import Ledger, Rental
    from deploy.providers.base import Log
    from deploy.remote.host import RemoteHost

DIRECT_ANSWER_S = 5.0  # a direct route that has not sent its SSH banner by then counts as not answering
KEYS = "~/.ssh/authorized_keys"


def authorized_key_onstart(public_key: str) -> str:
    """Shell for the onstart: our public key in ~/.ssh/authorized_keys, once however often the container starts,
    on a line of its own even when the file does not end with a newline. The key is public (the onstart is readable
    back from vast), never the private half."""
    key = public_key.strip()
    if not key.startswith(("ssh-", "ecdsa-")) or "\n" in key or "\r" in key:
        raise ProviderError("refusing to put something that is not one SSH public key in the box's onstart")
    q = shlex.quote(key)
    return (
        f"(umask 077; mkdir -p ~/.ssh && touch {KEYS} && "
        f'{{ grep -qxF {q} {KEYS} || {{ [ -z "$(tail -c1 {KEYS})" ] || echo >> {KEYS}; echo {q} >> {KEYS}; }}; }})'
    )


def routes_of(rental: Rental) -> list[tuple[str, str, int]]:
    """The rental's SSH routes as recorded when it ran (`ssh_routes`, direct first), one per address; else its
    recorded endpoint alone."""
    return rental.ssh.route_list()


def open_by_route(
    make: Callable[[Rental, float], RemoteHost],
    rental: Rental,
    ledger: Ledger,
    *,
    timeout_s: float,
    poll_s: float,
    log: Log,
) -> RemoteHost:
    """SSH to the rental by whichever route answers (see the module's docstring); records the route that did.
    `make(rental, connect_timeout)` builds the connection to the rental's ssh_host/ssh_port."""
    from deploy.remote.host import wait_for_ssh

    routes = routes_of(rental)
    if not routes:
        raise ProviderError(f"rental {rental.id} has no SSH endpoint recorded yet (status {rental.status})")
    dial = _Dialer(make, rental, ledger, routes)
    host = wait_for_ssh(dial, deadline=time.monotonic() + timeout_s, what=f"rental {rental.id}", poll_s=poll_s, log=log)
    _record(ledger, rental, dial.tries[-1], host, tried=dial.tries, log=log)
    return host


class _Dialer:
    """Makes each try's connection: the first route that has answered SSH, else the routes in turn (direct first,
    given only DIRECT_ANSWER_S to speak while the proxy is there to fall back on)."""

    def __init__(self, make: Callable[[Rental, float], RemoteHost], rental: Rental, ledger: Ledger, routes: list):
        self.make, self.rental, self.ledger, self.routes = make, rental, ledger, routes
        self.tries: list[str] = []  # the route of every try, in order
        self.answered: set[str] = set()  # routes whose sshd presented its host key
        self.previous: RemoteHost | None = None

    def __call__(self) -> RemoteHost:
        if self.previous is not None and self.previous.seen_key:
            self.answered.add(self.tries[-1])
        name, host, port = next(
            (r for r in self.routes if r[0] in self.answered), self.routes[len(self.tries) % len(self.routes)]
        )
        self.tries.append(name)
        quick = name == "direct" and len(self.routes) > 1 and not self.answered
        current = self.ledger.require(self.rental.id)  # with the host key, once the first try pinned it
        self.previous = self.make(
            dataclasses.replace(current, ssh_host=host, ssh_port=port), DIRECT_ANSWER_S if quick else 10.0
        )
        return self.previous


def _record(ledger: Ledger, rental: Rental, name: str, host: RemoteHost, *, tried: list[str], log: Log) -> None:
    current = ledger.require(rental.id)
    if (current.ssh_host, current.ssh_port) != (host.host, host.port):
        ledger.record_connection(rental.id, ssh_host=host.host, ssh_port=host.port, ssh_user=current.ssh_user)
    if not name:
        return
    ledger.update_meta(rental.id, **records.ssh_path(name))
    why = " (the direct route did not answer)" if name == "proxy" and "direct" in tried else ""
    ledger.event(rental.id, "ssh_path", f"{name} {host.host}:{host.port}{why}")
    if why:
        log(f"rental {rental.id}: SSH goes through vast's proxy {host.host}:{host.port}{why}")
