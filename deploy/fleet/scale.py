"""Changing a fleet's size: grow by a parallel provision, shrink by draining first.

Removal always drains: the replica leaves the gateway's rotation (HAProxy `state drain`), its streams finish
(HAProxy's open connections to it and its own /metrics both at zero), and only then is the gateway reloaded without
it and the rental ended.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from deploy.cancel import pause
from deploy.errors import DeployError, UsageError
from deploy.fleet.model import Added, ScaleResult, choose_for_removal, replica_token, replica_verify
from deploy.fleet.probe import probe
from deploy.fleet.replicas import add_replicas
from deploy.gateway.errors import GatewayError
from deploy.gateway.fleet_gateway import gateway_reload, paths, replica_url
from deploy.gateway.process import master_pid
from deploy.gateway.runtime_api import drain, server_stats
from deploy.ledger import Ledger
from deploy.ledger.fleets import ACTIVE, DRAINING, REMOVED, Fleet, FleetStore, Replica
from deploy.providers import provider_for
from deploy.provision.release import end_rental
from deploy.remote.tunnels import close as close_tunnel
from deploy.settings import DeploySettings

Log = Callable[[str], None]


def end_replica(settings: DeploySettings, ledger: Ledger, r: Replica, *, reason: str, log: Log) -> None:
    """End a replica's rental as `deploy teardown` does (deploy/provision/release.py). A box whose server cannot be
    stopped keeps its row open, and the message names the teardown to run."""
    rental = ledger.get(r.rental.id)
    if rental is None or not rental.is_open:
        return
    try:
        end_rental(provider_for(rental, settings), ledger, rental, settings, reason=reason, log=log)
    except DeployError as exc:
        log(f"{r.name}: {exc}; the rental stays open: `deploy teardown {rental.id}`")


def wait_idle(
    settings: DeploySettings, fleet: Fleet, r: Replica, *, timeout: float, log: Log, poll_s: float = 0.25
) -> None:
    """Until the gateway has no connection open to this replica and the replica itself has no stream running or
    waiting (a dead replica is idle by definition)."""
    p = paths(settings, fleet)
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        busy = []
        if master_pid(p) is not None:
            stat = server_stats(p).get(r.name)
            if stat is not None and stat.current > 0:
                busy.append(f"{stat.current} open at the gateway")
        url = replica_url(settings, fleet, r)
        if url:
            pr = probe(url, replica_token(r), timeout=3.0, verify=replica_verify(r))
            if pr.metrics and pr.busy:
                busy.append(f"{pr.metrics['active_streams']:.0f} streaming, {pr.metrics['queue_depth']:.0f} queued")
        if not busy:
            return
        if "; ".join(busy) != last:
            last = "; ".join(busy)
            log(f"draining {r.name}: {last}")
        if time.monotonic() > deadline:
            raise DeployError(
                f"replica {r.name} still busy after {timeout:g} s ({last}); it stays out of rotation: "
                f"run `deploy scale` again to finish, or `deploy teardown {r.rental.id}` to cut it"
            )
        pause(
            poll_s,
            f"replica {r.name} (rental {r.rental.id}) stays out of rotation, still billing: run `deploy scale` "
            f"again to finish draining it, or `deploy teardown {r.rental.id}` to cut it",
        )


def remove(
    settings: DeploySettings, store: FleetStore, fleet: Fleet, victims: list[Replica], *, log: Log, drain_s: float
) -> list[str]:
    """Drain, wait, reload without them, destroy, record. Returns the names removed."""
    p = paths(settings, fleet)
    running = master_pid(p) is not None
    for r in victims:
        if r.state == ACTIVE:
            store.set_state(r, DRAINING, "scale down")
        if running:
            try:
                drain(p, r.name)
            except GatewayError as exc:
                log(f"{r.name}: {exc}")
        log(f"{r.name} (rental {r.rental.id}): out of rotation, waiting for its streams to finish")
    for r in victims:
        wait_idle(settings, fleet, r, timeout=drain_s, log=log)
    gateway_reload(settings, store, fleet)
    done = []
    for r in victims:
        close_tunnel(p.dir, r.name)
        end_replica(settings, store.ledger, r, reason=f"fleet {fleet.name}: removed", log=log)
        store.set_state(r, REMOVED, "drained and destroyed")
        log(f"{r.name} (rental {r.rental.id}): drained and destroyed")
        done.append(r.name)
    return done


def scale(settings: DeploySettings, fleet_name: str, target: int, *, log: Log, drain_s: float) -> ScaleResult:
    if target < 1:
        raise UsageError(f"a fleet needs at least 1 replica, not {target} (`deploy teardown` ends it all)")
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        store.retire_closed(fleet)
        active = store.replicas(fleet, (ACTIVE,))
        leftover = store.replicas(fleet, (DRAINING,))
        removed = remove(settings, store, fleet, leftover, log=log, drain_s=drain_s) if leftover else []
        if len(active) > target:
            unhealthy = []
            if master_pid(paths(settings, fleet)) is not None:
                unhealthy = [n for n, s in server_stats(paths(settings, fleet)).items() if not s.up]
            victims = choose_for_removal(active, len(active) - target, unhealthy)
            removed += remove(settings, store, fleet, victims, log=log, drain_s=drain_s)
    added = Added()
    if len(active) < target:
        added = add_replicas(settings, fleet_name, target - len(active), log=log)
        with Ledger(settings.ledger_path) as ledger:
            store = FleetStore(ledger)
            gateway_reload(settings, store, store.get(fleet_name))
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        now_active = [r.name for r in store.replicas(store.get(fleet_name), (ACTIVE,))]
    result = ScaleResult(fleet_name, target, now_active, removed, added.names, added.failures)
    if added.failures:
        raise DeployError(f"scale reached {len(now_active)} of {target} replicas: " + "; ".join(added.failures))
    return result
