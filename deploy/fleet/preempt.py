"""Replicas whose box the provider stopped: an interruptible one outbid (vast keeps it `intended running` while it
says stopped), or any replica whose instance is stopped. Each autoscale and heal check looks for them and, for each:
records the preemption (the `preempted` event, once), takes it out of the gateway (drain, then a reload without it:
streams elsewhere keep flowing), destroys it (a stopped vast instance still bills its disk), and replaces it: at a
bid first, on demand when no bid box comes up within the deadline (deploy/fleet/mix.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from deploy.errors import DeployError
from deploy.fleet.model import Added
from deploy.fleet.replicas import add_replicas
from deploy.fleet.scale import end_replica
from deploy.gateway.errors import GatewayError
from deploy.gateway.fleet_gateway import gateway_reload, paths
from deploy.gateway.process import master_pid
from deploy.gateway.runtime_api import drain
from deploy.ledger import Ledger
from deploy.ledger.fleets import ACTIVE, DRAINING, REMOVED, Fleet, FleetStore, Replica
from deploy.providers import provider_for
from deploy.providers.records import Box, State
from deploy.providers.vast_bids import record_preemption
from deploy.remote.tunnels import close as close_tunnel
from deploy.settings import DeploySettings

Log = Callable[[str], None]


@dataclass
class Preemptions:
    """What one check found and did: the stopped replicas (name -> why), the ones destroyed, their replacements."""

    found: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    added: Added = field(default_factory=Added)


def stopped_box(settings: DeploySettings, r: Replica, log: Log) -> Box | None:
    """The replica's box when the provider says it was outbid or is stopped; None otherwise (or when it cannot
    tell: a failed look is said and tried again at the next check)."""
    if not r.rental.is_open or r.rental.provider_id is None:
        return None
    try:
        box = provider_for(r.rental, settings).get(str(r.rental.provider_id))
    except NotImplementedError:
        return None
    except DeployError as exc:
        log(f"{r.name}: could not ask the provider about it ({exc}); next check")
        return None
    if box is not None and (box.preempted or box.state == State.STOPPED):
        return box
    return None


def why(box: Box) -> str:
    if box.preempted:
        return "outbid: the provider stopped its interruptible instance for a higher bid"
    return f"its instance is stopped ({box.raw_status or box.state.value})"


def find_stopped(settings: DeploySettings, store: FleetStore, fleet: Fleet, log: Log) -> list[tuple[Replica, Box]]:
    return [(r, box) for r in store.replicas(fleet, (ACTIVE,)) if (box := stopped_box(settings, r, log)) is not None]


def retire(settings: DeploySettings, store: FleetStore, fleet: Fleet, found: list[tuple[Replica, Box]], log: Log):
    """Record, drain at the gateway, reload without them, destroy, mark removed."""
    p = paths(settings, fleet)
    gateway_up = master_pid(p) is not None
    for r, box in found:
        if not record_preemption(store.ledger, r.rental, box) and not box.preempted:
            store.ledger.event(r.rental.id, "stopped", f"the provider shows instance {box.id} stopped")
        store.set_state(r, DRAINING, why(box))
        if gateway_up:
            try:
                drain(p, r.name)  # no new request goes to it from now on, before the reload takes it out
            except GatewayError as exc:
                log(f"{r.name}: {exc}")
        log(f"{r.name} (rental {r.rental.id}): {why(box)}; out of rotation, destroying it")
    gateway_reload(settings, store, fleet)
    for r, box in found:
        close_tunnel(p.dir, r.name)
        end_replica(settings, store.ledger, r, reason=f"fleet {fleet.name}: {why(box)}", log=log)
        store.set_state(r, REMOVED, f"replaced: {why(box)}")


def cap_room(store: FleetStore, fleet: Fleet, max_usd_per_h: float | None, count: int) -> float | None:
    """What each of `count` replacements may cost per hour under the fleet's spend cap, given what its open replicas
    cost now (None: no cap). A replacement rented on demand costs more than the bid it replaces; the cap is hard."""
    if max_usd_per_h is None:
        return None
    now = sum(r.rental.rate_usd_h or 0.0 for r in store.replicas(fleet, (ACTIVE, DRAINING)) if r.rental.is_open)
    return (max_usd_per_h - now) / max(1, count)


def handle_preempted(
    settings: DeploySettings,
    fleet_name: str,
    *,
    log: Log,
    replace: bool = True,
    max_usd_per_h: float | None = None,
) -> Preemptions:
    """One check: every active replica's box asked once; the stopped ones retired and (with `replace`) replaced,
    each replacement's offer bounded by what `max_usd_per_h` (the fleet's spend cap) leaves."""
    out = Preemptions()
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        store.retire_closed(fleet)
        found = find_stopped(settings, store, fleet, log)
        if not found:
            return out
        out.found = {r.name: why(box) for r, box in found}
        retire(settings, store, fleet, found, log)
        out.removed = [r.name for r, _ in found]
        room = cap_room(store, fleet, max_usd_per_h, len(found))
    if replace and room is not None and room <= 0:
        log(f"spend cap holds the replacement of {', '.join(out.removed)}: the fleet's open replicas already cost "
            f"${max_usd_per_h - room * len(found):.3f}/h of ${max_usd_per_h:g}/h")  # fmt: skip
        return out
    if replace:
        if room is not None:
            log(f"replacing {', '.join(out.removed)} at most ${room:.3f}/h each (the spend cap's room)")
        out.added = add_replicas(settings, fleet_name, len(found), log=log, max_price_usd_h=room)
        with Ledger(settings.ledger_path) as ledger:
            store = FleetStore(ledger)
            gateway_reload(settings, store, store.get(fleet_name))
        for name in out.added.names:
            log(f"{name}: replaces {', '.join(out.removed)}")
    return out
