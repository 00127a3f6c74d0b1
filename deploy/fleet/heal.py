"""Healing a fleet: replicas whose instance died are destroyed and replaced at once; one whose /ready keeps failing
is watched for a set time and replaced if it does not recover. The gateway is reloaded around the change. A replica
whose box was stopped (outbid at its bid, or stopped) goes first, the preemption recorded (deploy/fleet/preempt.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

from deploy.cancel import pause
from deploy.errors import DeployError
from deploy.fleet.model import Added, HealResult, due_for_replacement, replica_token, replica_verify
from deploy.fleet.preempt import Preemptions, handle_preempted
from deploy.fleet.probe import Probe, probe
from deploy.fleet.replicas import add_replicas
from deploy.fleet.scale import end_replica, remove
from deploy.gateway.fleet_gateway import backends, gateway_reload, paths, replica_url
from deploy.gateway.process import master_pid
from deploy.ledger import Ledger
from deploy.ledger.fleets import ACTIVE, DRAINING, REMOVED, FleetStore, Replica
from deploy.providers import provider_for
from deploy.providers.records import State
from deploy.remote.tunnels import close as close_tunnel
from deploy.settings import DeploySettings

Log = Callable[[str], None]


def box_alive(settings: DeploySettings, r: Replica) -> bool:
    """The replica's instance still runs (or is coming up); a provider that cannot tell says yes."""
    if not r.rental.is_open or r.rental.provider_id is None:
        return False
    try:
        box = provider_for(r.rental, settings).get(str(r.rental.provider_id))
    except NotImplementedError:
        return True
    return box is not None and box.state in (State.RUNNING, State.PENDING)


def heal(
    settings: DeploySettings,
    fleet_name: str,
    *,
    after_s: float,
    log: Log,
    only: str | None = None,
    replace: bool = True,
    poll_s: float = 1.0,
) -> HealResult:
    """Replace replicas whose instance died, or whose /ready has failed for `after_s` seconds (watched here until
    it either recovers or the time is up). Dead ones are destroyed (nothing left billing), then replaced."""
    pre = handle_preempted(settings, fleet_name, log=log, replace=replace) if only is None else Preemptions()
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        store.retire_closed(fleet)
        candidates = store.replicas(fleet, (ACTIVE,))
        if only is not None:
            candidates = [store.replica(fleet, only)]
        verdicts: dict[str, str] = {}
        due: list[Replica] = []
        pending = list(candidates)
        while pending:
            now = time.time()
            still = []
            for r in pending:
                r = store.replica(fleet, r.name)
                alive = box_alive(settings, r)
                ready, detail = True, "no server (box only)"
                if alive and r.endpoint:
                    url = replica_url(settings, fleet, r)
                    if url is None and r.needs_tunnel and master_pid(paths(settings, fleet)) is not None:
                        try:
                            backends(settings, fleet, [r])  # reopens its tunnel
                        except DeployError as exc:
                            log(f"{r.name}: {exc}")
                        url = replica_url(settings, fleet, r)
                    pr = (
                        probe(url, replica_token(r), timeout=3.0, with_metrics=False, verify=replica_verify(r))
                        if url
                        else Probe(False, "no tunnel")
                    )
                    ready, detail = pr.ready, pr.detail
                if ready:
                    store.set_failing(r, None)
                elif alive and r.failing_since is None:
                    store.set_failing(r, now)
                    r = store.replica(fleet, r.name)
                replace_now, why = due_for_replacement(r, box_alive=alive, ready=ready, now=now, after_s=after_s)
                verdicts[r.name] = why if not ready else "ready"
                if replace_now:
                    due.append(r)
                    log(f"{r.name} (rental {r.rental.id}): {why} ({detail}); replacing it")
                elif not ready:
                    still.append(r)
            pending = still
            if pending:
                pause(poll_s, f"heal stopped while watching {', '.join(r.name for r in pending)}; nothing was changed")
        leftover = store.replicas(fleet, (DRAINING,))  # a scale or heal that stopped half-way: finish it
        if leftover and only is None:
            remove(settings, store, fleet, leftover, log=log, drain_s=600.0)
        for r in due:
            store.set_state(r, DRAINING, verdicts[r.name])
        if due:
            gateway_reload(settings, store, fleet)
        for r in due:
            close_tunnel(paths(settings, fleet).dir, r.name)
            end_replica(settings, store.ledger, r, reason=f"heal: {verdicts[r.name]}", log=log)
            store.set_state(r, REMOVED, f"replaced: {verdicts[r.name]}")
    added = Added()
    if due and replace:
        added = add_replicas(settings, fleet_name, len(due), log=log)
        with Ledger(settings.ledger_path) as ledger:
            store = FleetStore(ledger)
            gateway_reload(settings, store, store.get(fleet_name))
    verdicts.update(pre.found)
    failures = pre.added.failures + added.failures
    result = HealResult(
        fleet_name, verdicts, pre.removed + [r.name for r in due], pre.added.names + added.names, failures
    )
    if failures:
        raise DeployError("heal removed the dead replicas but could not replace all: " + "; ".join(failures))
    return result
