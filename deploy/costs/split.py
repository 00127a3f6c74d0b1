"""Interruptible and on-demand apart: the hours and dollars of each kind, the preemptions, and what a window of a
fleet's life cost per hour of audio.

A rental is interruptible when it was rented at a bid (`Billing.interruptible`); every other rental is on-demand.
Money comes from deploy/costs/price.py only, so the two kinds add up to what `deploy cost` shows in total. A
preemption is a `preempted` ledger event on a rental (the provider stopped it for a higher bid), or, for a row that
has no such event, the `preempted_at` its billing recorded.

A window's USD per hour of audio divides dollars by audio over the same replica-time: per replica, from the first to
the last reading of its audio counter inside the window (deploy/costs/audio.py: `counted_span`), priced over exactly
that span. The rest of the window's spend (a replica never read twice in it, or read last long before it was removed)
is not in the ratio; `coverage` says what share of the spend the ratio stands on. Nothing read: None ("unknown").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deploy.costs.audio import Point, counted_span, usd_per_audio_hour_served
from deploy.costs.price import billed, interval, price
from deploy.ledger import Rental
from deploy.providers.records import Charge

ON_DEMAND, INTERRUPTIBLE = "on-demand", "interruptible"
PREEMPTED = "preempted"  # the ledger event a rental gets when the provider stopped it for a higher bid
HOUR_S, DAY_S = 3600.0, 86400.0


def kind(rental: Rental) -> str:
    return INTERRUPTIBLE if rental.billing.interruptible else ON_DEMAND


def preemption_times(rental: Rental, events: Iterable[Mapping[str, Any]] = ()) -> list[float]:
    """When the provider stopped this rental for a higher bid: its `preempted` events, else its billing's record."""
    times = sorted(float(e["at"]) for e in events if e.get("kind") == PREEMPTED)
    if not times and rental.billing.preempted_at is not None:
        times = [rental.billing.preempted_at]
    return times


@dataclass
class KindTotal:
    """One kind's rentals that billed in the window, their hours and their dollars."""

    rentals: int = 0
    hours: float = 0.0
    usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"rentals": self.rentals, "hours": round(self.hours, 6), "usd": round(self.usd, 6)}


@dataclass
class Split:
    on_demand: KindTotal = field(default_factory=KindTotal)
    interruptible: KindTotal = field(default_factory=KindTotal)
    preemptions: int = 0

    @property
    def usd(self) -> float:
        return self.on_demand.usd + self.interruptible.usd

    def as_dict(self) -> dict[str, Any]:
        return {
            "on_demand": self.on_demand.as_dict(),
            "interruptible": self.interruptible.as_dict(),
            "preemptions": self.preemptions,
        }

    def describe(self) -> str:
        def one(name: str, k: KindTotal) -> str:
            return f"{name} {k.rentals} rental(s) {k.hours:.3f} h ${k.usd:.4f}"

        return (
            f"{one(ON_DEMAND, self.on_demand)}; {one(INTERRUPTIBLE, self.interruptible)}; "
            f"{self.preemptions} preemption(s)"
        )


def _charge(charges: Mapping[str, Mapping[str, Charge]] | None, rental: Rental) -> Charge | None:
    return ((charges or {}).get(rental.provider) or {}).get(rental.provider_id or "")


def cost_split(
    rentals: Sequence[Rental],
    *,
    now: float,
    since: float | None = None,
    charges: Mapping[str, Mapping[str, Charge]] | None = None,
    events: Mapping[int, Sequence[Mapping[str, Any]]] | None = None,
) -> Split:
    """Each rental that billed in [since, now], priced as `deploy cost` prices it, added to its kind; the preemptions
    that happened in the same window. `events`: each rental's ledger events (rental id -> rows)."""
    split = Split()
    for r in rentals:
        charge = _charge(charges, r)
        lo = float("-inf") if since is None else since
        split.preemptions += sum(1 for t in preemption_times(r, (events or {}).get(r.id, ())) if lo <= t <= now)
        if interval(billed(r, charge), now=now, since=since) is None:
            continue
        spend = price(r, now=now, since=since, charge=charge)
        total = split.interruptible if kind(r) == INTERRUPTIBLE else split.on_demand
        total.rentals += 1
        total.hours += spend.hours
        total.usd += spend.usd
    return split


@dataclass
class Window:
    """The last `seconds` of a fleet: its spend apart by kind, and the dollars per hour of audio where counted."""

    seconds: float
    split: Split
    counted_usd: float = 0.0  # the spend over the spans whose audio was read
    audio_seconds: float | None = None  # None: no replica's counter was read twice in the window

    @property
    def usd(self) -> float:
        return self.split.usd

    @property
    def usd_per_audio_h(self) -> float | None:
        """None when no audio was counted (nothing read, or nothing served while read); 0 only when it was free."""
        if self.audio_seconds is None:
            return None
        return usd_per_audio_hour_served(self.counted_usd, self.audio_seconds)

    @property
    def coverage(self) -> float | None:
        """The share of the window's spend the ratio stands on (None when nothing was spent)."""
        return None if self.usd <= 0 else min(1.0, self.counted_usd / self.usd)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "usd": round(self.usd, 6),
            **self.split.as_dict(),
            "audio_seconds": None if self.audio_seconds is None else round(self.audio_seconds, 2),
            "counted_usd": round(self.counted_usd, 6),
            "coverage": None if self.coverage is None else round(self.coverage, 4),
            "usd_per_audio_h": self.usd_per_audio_h,
        }


def fleet_window(
    rentals: Sequence[Rental],
    *,
    now: float,
    seconds: float,
    points: Mapping[int, Sequence[Point]],
    events: Mapping[int, Sequence[Mapping[str, Any]]] | None = None,
    charges: Mapping[str, Mapping[str, Charge]] | None = None,
) -> Window:
    """The fleet's last `seconds` up to `now`. `points`: per rental id, the readings of its replica's audio counter
    (the ledger's samples and, for a live replica, the one just read)."""
    since = now - seconds
    window = Window(seconds, cost_split(rentals, now=now, since=since, charges=charges, events=events))
    for r in rentals:
        if r.started_at is None:
            continue
        span = counted_span(r.started_at, points.get(r.id, ()), since=since, now=now)
        if span is None:
            continue
        first, last = span
        window.counted_usd += price(r, now=last.at, since=first.at, charge=_charge(charges, r)).usd
        window.audio_seconds = (window.audio_seconds or 0.0) + (last.seconds - first.seconds)
    return window


def describe_window(name: str, w: Window) -> str:
    """One line: the spend apart by kind, the preemptions, and the USD per hour of audio (or why it is unknown)."""
    if w.usd_per_audio_h is not None:
        per = (
            f"${w.usd_per_audio_h:.4f} per hour of audio ({w.audio_seconds:.1f} s of audio from the replicas' "
            f"/metrics, {100 * (w.coverage or 0):.0f}% of the spend)"
        )
    elif w.audio_seconds is not None:
        per = "per hour of audio: unknown (no audio served while counted)"
    else:
        per = "per hour of audio: unknown (no replica's /metrics read twice in it)"
    return f"{name}: ${w.usd:.4f} spent; {w.split.describe()}; {per}"
