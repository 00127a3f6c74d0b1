"""The autoscale loop: every interval, replicas stopped by their provider are replaced (deploy/fleet/preempt.py),
then the fleet is looked at (each active replica's /metrics and the gateway's own stats), the policy decides
(deploy/fleet/autoscale_policy.py), and the decision is carried out with the same code as `deploy scale`: a parallel
provision to grow, drain-then-destroy to shrink. Each decision is logged with its reason, and every change (and a
growth the spend cap or --max blocked) is written to the ledger as an `autoscale` event.

It runs on the gateway's machine in the foreground; SIGINT, SIGTERM and SIGHUP stop it at its next wait, and
replicas being added at that moment roll back what they rented (deploy/cancel.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from deploy.cancel import pause
from deploy.costs.audio import record_sample
from deploy.errors import DeployError
from deploy.fleet.autoscale_policy import Autoscaler, Decision, Observation, Policy
from deploy.fleet.model import choose_for_removal, replica_token, replica_verify
from deploy.fleet.preempt import handle_preempted
from deploy.fleet.probe import Probe, probe
from deploy.fleet.replicas import add_replicas
from deploy.fleet.scale import remove
from deploy.gateway.errors import GatewayError
from deploy.gateway.fleet_gateway import gateway_reload, paths, replica_url
from deploy.gateway.process import master_pid
from deploy.gateway.runtime_api import ServerStat, server_stats
from deploy.ledger import Ledger
from deploy.ledger.fleets import ACTIVE, ALL_STATES, DRAINING, LIVE_STATES, Fleet, FleetStore
from deploy.settings import DeploySettings

Log = Callable[[str], None]
EVENT = "autoscale"


@dataclass(frozen=True)
class LoopOptions:
    interval_s: float = 15.0
    drain_s: float = 600.0  # how long a removed replica's streams may take to finish
    warmup_s: float = 900.0  # an active replica not ready yet counts as being added for this long after it joined
    once: bool = False  # one check, one decision (and its action), then return


@dataclass
class Look:
    """One look at the fleet: the policy's Observation and what each replica said."""

    obs: Observation
    replicas: dict[str, dict[str, Any]] = field(default_factory=dict)


def gateway_view(settings: DeploySettings, fleet: Fleet, log: Log) -> dict[str, ServerStat] | None:
    """HAProxy's per-replica stats, None when no gateway runs (or it does not answer now)."""
    p = paths(settings, fleet)
    if master_pid(p) is None:
        return None
    try:
        return server_stats(p)
    except GatewayError as exc:
        log(f"gateway stats: {exc}")
        return None


def look(
    settings: DeploySettings, fleet_name: str, seen_429: dict[str, float], *, now: float, warmup_s: float, log: Log
) -> Look:
    """Read every active replica's /metrics and the gateway's stats into an Observation. `seen_429`: each replica's
    429 counter at the last look (updated here; a replica's first look is its baseline)."""
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        store.retire_closed(fleet)
        active = store.replicas(fleet, (ACTIVE,))
        live = [r for r in store.replicas(fleet, LIVE_STATES) if r.rental.is_open]
        rates = [r.rental.rate_usd_h for r in store.replicas(fleet, ALL_STATES) if r.rental.rate_usd_h]
        wall = ledger.clock()
    stats = gateway_view(settings, fleet, log)
    out = Look(Observation(now=now, replicas=0))
    obs = out.obs
    readings: dict[int, float] = {}  # each replica's audio counter
    for r in active:
        url = replica_url(settings, fleet, r)
        pr = probe(url, replica_token(r), timeout=3.0, verify=replica_verify(r)) if url else Probe(False, "no address")
        gw = stats.get(r.name) if stats is not None else None
        in_rotation = stats is None or (gw is not None and gw.up)
        m = pr.metrics
        if m:
            readings[r.rental.id] = m.get("audio_seconds", 0.0)
        streams, queued = int(m.get("active_streams", 0)), int(m.get("queue_depth", 0))
        if gw is not None:  # the gateway's open connections to it are a floor (its /metrics may not have answered)
            streams = max(streams, gw.current - queued)
        counter = m.get("rejected_429")
        rejected = 0
        if counter is not None:
            before = seen_429.get(r.name)
            rejected = 0 if before is None else int(counter - before if counter >= before else counter)
            seen_429[r.name] = counter
        if pr.ready and in_rotation:
            state = "ready"
            obs.replicas += 1
            obs.active_streams += streams
            obs.queued += queued
            obs.rejected_429 += rejected
        elif wall - r.added_at < warmup_s:
            state = "warming"
            obs.pending += 1
        else:
            state = "unready"  # left to `deploy heal`; not counted, so the fleet still grows to its minimum
        out.replicas[r.name] = {"state": state, "streams": streams, "queued": queued, "rejected_429": rejected,
                                "detail": pr.detail, "gateway": gw.status if gw else None}  # fmt: skip
    if readings:  # kept (one a minute) for the fleet's USD per hour of audio: deploy/costs/audio.py
        with Ledger(settings.ledger_path) as ledger:
            for rid, seconds in readings.items():
                record_sample(ledger, rid, seconds)
    obs.usd_per_h = round(sum(r.rental.rate_usd_h for r in live), 6)
    obs.next_replica_usd_per_h = max(rates) if rates else None  # the dearest the fleet has rented: a bound
    return out


def act(settings: DeploySettings, fleet_name: str, decision: Decision, opts: LoopOptions, log: Log) -> dict[str, Any]:
    """Carry out an add or a remove as `deploy scale` does; returns what changed."""
    if decision.action == "add":
        added = add_replicas(settings, fleet_name, decision.count, log=log)
        with Ledger(settings.ledger_path) as ledger:
            store = FleetStore(ledger)
            gateway_reload(settings, store, store.get(fleet_name))
        return {"added": added.names, "failures": added.failures}
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        stats = gateway_view(settings, fleet, log) or {}
        unhealthy = [n for n, s in stats.items() if not s.up]
        victims = choose_for_removal(store.replicas(fleet, (ACTIVE,)), decision.count, unhealthy)
        return {"removed": remove(settings, store, fleet, victims, log=log, drain_s=opts.drain_s)}


def finish_draining(settings: DeploySettings, fleet_name: str, opts: LoopOptions, log: Log) -> list[str]:
    """Replicas a stopped scale or autoscale left draining: drained and destroyed now."""
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        leftover = store.replicas(fleet, (DRAINING,))
        return remove(settings, store, fleet, leftover, log=log, drain_s=opts.drain_s) if leftover else []


class DecisionLog:
    """Says each decision once: every add and remove, and a hold when its reason changes (numbers aside); writes
    changes and blocked growth to the ledger."""

    def __init__(self, settings: DeploySettings, fleet_name: str, log: Log, emit: Callable[[dict], None] | None):
        self.settings, self.fleet, self.log, self.emit = settings, fleet_name, log, emit
        self._last_hold = ""
        self._last_event = ""

    def __call__(self, d: Decision) -> None:
        key = re.sub(r"[\d.$]+", "#", d.reason)
        if d.action == "hold" and key == self._last_hold:
            return
        self._last_hold = key if d.action == "hold" else ""
        text = f"fleet {self.fleet}: {d.action}" + (f" {d.count}" if d.count else "") + f": {d.reason}"
        self.log(f"autoscale {text}")
        blocked = d.action == "hold" and ("spend cap" in d.reason or "already at --max" in d.reason)
        if (d.action != "hold" or blocked) and key != self._last_event:
            self._last_event = key
            with Ledger(self.settings.ledger_path) as ledger:  # before the change: a killed loop leaves its reason
                ledger.event(None, EVENT, text)

    def done(self, d: Decision, look_: Look, outcome: dict[str, Any] | None) -> None:
        if outcome is not None:
            with Ledger(self.settings.ledger_path) as ledger:
                ledger.event(None, EVENT, f"fleet {self.fleet}: {d.action} done: {outcome}")
        if self.emit is not None:
            self.emit({"fleet": self.fleet, **asdict(d), "observation": asdict(look_.obs),
                       "replicas": look_.replicas, **(outcome or {})})  # fmt: skip


def autoscale(
    settings: DeploySettings,
    fleet_name: str,
    policy: Policy,
    opts: LoopOptions,
    *,
    log: Log,
    emit: Callable[[dict], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Check, decide, act, wait; until a signal (or after one check with `opts.once`)."""
    scaler = Autoscaler(policy)
    seen_429: dict[str, float] = {}
    say = DecisionLog(settings, fleet_name, log, emit)
    log(f"autoscale fleet {fleet_name}: {describe(policy)}, a check every {opts.interval_s:g} s")
    while True:
        finish_draining(settings, fleet_name, opts, log)
        pre = handle_preempted(settings, fleet_name, log=log, max_usd_per_h=policy.max_usd_per_h)
        if pre.found:
            with Ledger(settings.ledger_path) as ledger:
                ledger.event(None, EVENT, f"fleet {fleet_name}: replaced {pre.removed} with {pre.added.names}")
        seen = look(settings, fleet_name, seen_429, now=clock(), warmup_s=opts.warmup_s, log=log)
        decision = scaler.decide(seen.obs)
        say(decision)
        outcome = None
        if decision.action != "hold":
            try:
                outcome = act(settings, fleet_name, decision, opts, log)
            except DeployError as exc:  # a failed add was rolled back; a drain that timed out stays draining
                outcome = {"error": str(exc)}
                log(f"autoscale fleet {fleet_name}: {decision.action} failed: {exc}")
            scaler.acted(clock())
        say.done(decision, seen, outcome)
        if opts.once:
            return
        pause(opts.interval_s, f"autoscale of fleet {fleet_name} stopped between checks; nothing was changing")


def describe(p: Policy) -> str:
    cap = f", at most ${p.max_usd_per_h:g}/h" if p.max_usd_per_h is not None else ""
    return (
        f"{p.min_replicas}-{p.max_replicas} replicas, {p.target_streams:g} streams each, grow after "
        f"{p.scale_up_after_s:g} s, shrink after {p.scale_down_after_s:g} s, cooldown {p.cooldown_s:g} s{cap}"
    )
