"""Ending a rental, one way for provision's rollback, `deploy teardown` and the fleet: stop what we started on a box
we do not own, destroy (or release) the box, confirm, and close the ledger row with the reason.

On a provider that owns its boxes (vast, local) destroy ends the server with the box. On one that does not (an SSH
host you brought) the server provision started there is stopped and the Hub token it put there deleted first; if the
box cannot be reached the row stays open (the server may still run) and the error says so.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

from deploy import ledger as L
from deploy.errors import DeployError
from deploy.ledger import Ledger, Rental, records
from deploy.providers import Provider
from deploy.providers.records import State
from deploy.provision.server import stop_server
from deploy.settings import DeploySettings


@dataclass(frozen=True)
class Ended:
    status: str  # destroyed | released | not_created
    server: str | None = None  # what happened to the server on a box we do not own ("pid 123 stopped")


def destroy_rental(
    provider: Provider, ledger: Ledger, rental: Rental, *, reason: str, timeout_s: float = 120.0, poll_s: float = 2.0
) -> str:
    """Destroy one rental and close its ledger row; returns the final status."""
    if rental.provider_id is None:
        ledger.close_rental(rental.id, L.NOT_CREATED, reason)
        return L.NOT_CREATED
    ledger.event(rental.id, "destroying", reason)
    ledger.update_meta(rental.id, **records.destroy_asked(ledger.clock()))  # billing cannot have stopped before this
    if rental.split_billing and rental.running_at is None:
        _note_running(provider, ledger, rental)
    try:
        ended = provider.destroy(rental.provider_id, deadline=time.monotonic() + timeout_s, poll_s=poll_s)
    except NotImplementedError as exc:
        ledger.close_rental(rental.id, L.RELEASED, f"{reason} ({exc})")
        return L.RELEASED
    ledger.close_rental(rental.id, L.DESTROYED, reason, ended_at=ended)  # where the provider stopped billing
    return L.DESTROYED


def _note_running(provider: Provider, ledger: Ledger, rental: Rental) -> None:
    """A rental whose GPU bills apart and whose running start was never seen (a provision killed while it waited)
    that runs now: its GPU is counted from the rental's start, an upper bound, rather than not at all."""
    try:
        box = provider.get(str(rental.provider_id))
    except DeployError:
        return
    if box is not None and box.state is State.RUNNING:
        since = rental.started_at or rental.created_at
        ledger.set_running(rental.id, since, "running when torn down, since unknown: counted from the start")


def end_rental(
    provider: Provider,
    ledger: Ledger,
    rental: Rental,
    settings: DeploySettings,
    *,
    reason: str,
    log: Callable[[str], None] = lambda _m: None,
) -> Ended:
    """On a box we do not own, stop our server and delete the Hub token we put there (destroying the box would
    have done both); then `destroy_rental`."""
    server = None
    if not provider.owns_boxes and (rental.server.pid or rental.server.box_hf_token_file):
        server = _clean_box(provider, ledger, rental, settings)
        if server:
            log(f"server on {rental.provider_id}: {server}")
    return Ended(destroy_rental(provider, ledger, rental, reason=reason), server)


def _clean_box(provider: Provider, ledger: Ledger, rental: Rental, settings: DeploySettings) -> str | None:
    pid = rental.server.pid
    what = f"the server (pid {pid})" if pid else "the Hub token file"
    try:
        host = provider.host(rental, settings, ledger)
        try:
            outcome = stop_server(host, rental.server) if pid else None
            if token_file := rental.server.box_hf_token_file:
                host.run(f"rm -f {shlex.quote(str(token_file))}", stream=False)
                ledger.event(rental.id, "hub_token_removed", str(token_file))
        finally:
            host.close()
    except (DeployError, OSError, EOFError) as exc:
        kill = f"; on the box: kill -- -{pid}" if pid else ""
        raise DeployError(f"could not stop {what} on {rental.provider_id}: {exc}{kill}") from exc
    except Exception as exc:  # noqa: BLE001 - paramiko and socket errors from an unreachable box
        raise DeployError(f"could not reach {rental.provider_id} to stop {what}: {exc}") from exc
    if outcome is None:
        return None
    ledger.event(rental.id, "server_stopped", f"pid {pid}: {outcome}")
    return f"pid {pid} {outcome}"
