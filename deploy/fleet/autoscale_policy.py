"""When a fleet grows or shrinks: a pure decision over what the loop observed, with no I/O, so the same rule runs in
the autoscale loop, its tests and the fleet bench.

Hysteresis, so that a load that wobbles around the target never flaps:
- grow only when the load per ready replica has stayed above the target (or requests queued, or got 429) for
  `scale_up_after_s`, a moment below it restarting the clock;
- shrink only when the load would still be well below the target with fewer replicas
  (`load / (n - k) < target * SHRINK_HEADROOM`) for `scale_down_after_s` (ten times longer by default);
- after any change, `cooldown_s` of holding, and nothing while a replica is still being added.
The bounds come first (below min: add; above max: remove); the spend cap blocks any growth it would exceed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

SHRINK_HEADROOM = 0.7
"""Shrink only while the load per replica, with the replicas taken away, stays under 70% of the target: the gap
between this and the grow threshold (100%) is what keeps a load near the target from flapping."""

Action = Literal["add", "remove", "hold"]


@dataclass(frozen=True)
class Policy:
    """The operator's rule: the fleet's bounds, the streams one replica should carry, how long a load must last
    before the fleet follows it, and the most the whole fleet may cost per hour (None: no cap)."""

    min_replicas: int
    max_replicas: int
    target_streams: float
    scale_up_after_s: float = 60.0
    scale_down_after_s: float = 600.0
    max_usd_per_h: float | None = None
    cooldown_s: float = 120.0

    def __post_init__(self) -> None:
        if self.min_replicas < 1:
            raise ValueError(f"--min must be at least 1 (got {self.min_replicas})")
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"--max ({self.max_replicas}) is below --min ({self.min_replicas})")
        if not self.target_streams > 0:
            raise ValueError(f"--target-streams must be above 0 (got {self.target_streams})")
        for name in ("scale_up_after_s", "scale_down_after_s", "cooldown_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative (got {getattr(self, name)})")
        if self.max_usd_per_h is not None and not self.max_usd_per_h > 0:
            raise ValueError(f"--max-usd-per-hour must be above 0 (got {self.max_usd_per_h})")


@dataclass
class Observation:
    """One look at the fleet: `now` (monotonic seconds), ready replicas, replicas being added, streams running and
    queued over all ready replicas, 429 answers since the last look, what the fleet costs per hour now and what one
    more replica would add (None: unknown, which a spend cap treats as unaffordable)."""

    now: float
    replicas: int
    pending: int = 0
    active_streams: int = 0
    queued: int = 0
    rejected_429: int = 0
    usd_per_h: float = 0.0
    next_replica_usd_per_h: float | None = None

    @property
    def load(self) -> int:
        return self.active_streams + self.queued


@dataclass(frozen=True)
class Decision:
    action: Action
    count: int
    reason: str


class Autoscaler:
    """Keeps the clocks between observations: since when the load has been high, since when it has been low, and
    when the fleet last changed."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.high_since: float | None = None
        self.low_since: float | None = None
        self.changed_at: float | None = None

    def decide(self, obs: Observation) -> Decision:
        p = self.policy
        total = obs.replicas + obs.pending
        if total > p.max_replicas:
            return self._changed(
                obs, Decision("remove", total - p.max_replicas, f"{total} replicas, above --max {p.max_replicas}")
            )
        if total < p.min_replicas:
            return self._grow(obs, p.min_replicas - total, f"{total} replicas, below --min {p.min_replicas}")
        high, why_high = self._high(obs)
        shrink_by, why_low = self._shrinkable(obs)
        self.high_since = (obs.now if self.high_since is None else self.high_since) if high else None
        self.low_since = (obs.now if self.low_since is None else self.low_since) if shrink_by else None
        if obs.pending:
            return Decision("hold", 0, f"{obs.pending} replica(s) still being added")
        if self.changed_at is not None and obs.now - self.changed_at < p.cooldown_s:
            left = p.cooldown_s - (obs.now - self.changed_at)
            return Decision("hold", 0, f"cooldown after the last change ({left:.0f} s left)")
        if high:
            held = obs.now - self.high_since
            if held < p.scale_up_after_s:
                return Decision("hold", 0, f"{why_high} for {held:.0f} s of {p.scale_up_after_s:.0f} s")
            if total >= p.max_replicas:
                return Decision("hold", 0, f"{why_high}, but already at --max {p.max_replicas}")
            wanted = max(1, math.ceil(obs.load / p.target_streams) - total)
            return self._grow(obs, min(wanted, p.max_replicas - total), f"{why_high} for {held:.0f} s")
        if shrink_by:
            held = obs.now - self.low_since
            if held < p.scale_down_after_s:
                return Decision("hold", 0, f"{why_low} for {held:.0f} s of {p.scale_down_after_s:.0f} s")
            return self._changed(obs, Decision("remove", shrink_by, f"{why_low} for {held:.0f} s"))
        return Decision("hold", 0, f"{self._per_replica_text(obs)}: within target {p.target_streams:g}")

    def acted(self, now: float) -> None:
        """The change a decision asked for is done (a provision takes minutes): the cooldown counts from here."""
        self.changed_at = now
        self.high_since = self.low_since = None

    def _high(self, obs: Observation) -> tuple[bool, str]:
        p = self.policy
        if obs.rejected_429:
            return True, f"{obs.rejected_429} request(s) refused with 429"
        if obs.queued:
            return True, f"{obs.queued} request(s) queued"
        if obs.replicas == 0:
            return obs.load > 0, f"{obs.load} stream(s) and no ready replica"
        per = obs.load / obs.replicas
        return per > p.target_streams, f"{self._per_replica_text(obs)} > target {p.target_streams:g}"

    def _shrinkable(self, obs: Observation) -> tuple[int, str]:
        """How many replicas could go with the load still under the shrink threshold on the rest, never below min."""
        p = self.policy
        if obs.queued or obs.rejected_429:
            return 0, ""
        limit = p.target_streams * SHRINK_HEADROOM
        k = 0
        while obs.replicas - (k + 1) >= p.min_replicas and obs.load / (obs.replicas - (k + 1)) < limit:
            k += 1
        if not k:
            return 0, ""
        left = obs.replicas - k
        return k, f"load {obs.load} over {left} replica(s) = {obs.load / left:.2f}/replica < {limit:g} (70% of target)"

    def _grow(self, obs: Observation, count: int, why: str) -> Decision:
        cap = self.policy.max_usd_per_h
        if cap is not None:
            price = obs.next_replica_usd_per_h
            if price is None:
                return Decision(
                    "hold", 0, f"{why}, but the spend cap ${cap:g}/h is set and one more replica's price is unknown"
                )
            affordable = math.floor((cap - obs.usd_per_h) / price + 1e-9) if price > 0 else count
            if affordable < 1:
                return Decision(
                    "hold",
                    0,
                    f"{why}, but the spend cap blocks growth: ${obs.usd_per_h:.3f}/h + ${price:.3f}/h > ${cap:g}/h",
                )
            if affordable < count:
                why = f"{why}; the spend cap ${cap:g}/h allows {affordable} of {count}"
                count = affordable
        return self._changed(obs, Decision("add", count, why))

    def _changed(self, obs: Observation, decision: Decision) -> Decision:
        self.changed_at = obs.now
        self.high_since = self.low_since = None
        return decision

    @staticmethod
    def _per_replica_text(obs: Observation) -> str:
        per = obs.load / obs.replicas if obs.replicas else float(obs.load)
        return f"load {obs.active_streams}+{obs.queued} queued over {obs.replicas} replica(s) = {per:.2f}/replica"
