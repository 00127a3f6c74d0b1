"""The price of one rental, wherever a rental is priced (`deploy cost`, the fleet lines of `deploy status` and
`deploy cost`): first where its billing ended, then rate x time or vast's split over that interval.

Two ways a rental bills:
- rate x time (local, ssh, and any rental recorded without a disk rate): from the clock's start to its end;
- vast's split (the rental has `disk_usd_h`): the disk from the provider's start (create) to the end, the GPU
  (`rate_usd_h - disk_usd_h`, since vast's `dph_total` includes the disk) only while the box ran (from `running_at`).
  A box that never ran costs its disk alone. An interruptible rental's GPU rate is its bid (its `rate_usd_h` is the
  bid plus the disk); one vast stopped for a higher bid bills its GPU up to when it was first seen stopped
  (`billing.preempted_at`, an upper bound: vast stopped it after the last sighting that saw it running) and its disk
  until the destroy.

Where the billing ended:
- open and still there: it bills up to now;
- ended by the flow's destroy: when the accepted destroy returned (the ledger's `ended_at`), narrowed to the end of the
  provider's charge rows where that falls between the destroy's request (`billing.destroy_asked_at`) and its answer
  (vastai exits a second or more after vast took the destroy);
- gone outside the flow (its watchdog, the host, the web console: `gone_seen_at` is set): somewhere between the last
  time a listing or poll saw it alive and the first one that saw it gone. The provider's charge rows say where
  (clamped to that bound); without them it is priced to the last time it was seen alive, a lower bound, and the
  bound is shown ("ended between A and B").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

from deploy.ledger import Rental
from deploy.providers.records import Charge

CHARGES = "vast's charges"  # EndBound.source: the end of the provider's charge rows
LAST_SEEN = "the last time it was seen alive"


@dataclass(frozen=True)
class Spend:
    """One rental's cost in a window: hours billed, and the dollars (GPU and disk apart where billed apart)."""

    hours: float
    usd: float
    gpu_hours: float | None = None  # split billing only
    gpu_usd: float | None = None
    disk_usd: float | None = None


@dataclass(frozen=True)
class EndBound:
    """Where a rental that vanished outside the flow ended: after `lo`, by `hi`; priced to `at` (from `source`)."""

    lo: float  # the last time it was seen alive (else when it ran or started)
    hi: float  # the first time a listing showed it gone
    at: float
    source: str  # CHARGES | LAST_SEEN

    def describe(self) -> str:
        return f"ended between {utc(self.lo)} and {utc(self.hi)}, priced to {self.source} ({utc(self.at)})"


def utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def end_bound(rental: Rental, charge: Charge | None = None) -> EndBound | None:
    """None unless the rental vanished outside the flow. The provider's charge rows (`charge`, else the end they
    gave when the rental was seen gone, `billing.charges_end`) win over the last sighting."""
    if rental.gone_seen_at is None:
        return None
    sightings = (rental.last_seen_alive, rental.running_at, rental.started_at, rental.created_at)
    lo = max(t for t in sightings if t is not None)
    hi = max(lo, rental.gone_seen_at)
    end = charge.end if charge is not None and charge.end is not None else rental.billing.charges_end
    if isinstance(end, (int, float)):
        return EndBound(lo, hi, min(max(float(end), lo), hi), CHARGES)
    return EndBound(lo, hi, lo, LAST_SEEN)


def billed_until(rental: Rental, charge: Charge | None) -> Rental:
    """The rental with its end narrowed to where the provider's charges end, when they end within its destroy."""
    asked = rental.billing.destroy_asked_at
    end = charge.end if charge is not None else None
    if rental.ended_at is None or end is None or not isinstance(asked, (int, float)):
        return rental
    return dataclasses.replace(rental, ended_at=end) if asked <= end <= rental.ended_at else rental


def billed(rental: Rental, charge: Charge | None = None) -> Rental:
    """The rental with `ended_at` where its billing ended (None: it still bills)."""
    bound = end_bound(rental, charge)
    if bound is not None:
        return dataclasses.replace(rental, ended_at=bound.at)
    return billed_until(rental, charge)


def _clip(start: float | None, end: float | None, *, now: float, since: float | None) -> tuple[float, float] | None:
    if start is None:
        return None
    lo = start if since is None else max(start, since)
    hi = min(end if end is not None else now, now)
    return (lo, hi) if hi > lo else None


def interval(rental: Rental, *, now: float, since: float | None = None) -> tuple[float, float] | None:
    """The billed interval of one rental (as `billed` gives it) clipped to [since, now]; None if it never billed
    or lies outside."""
    return _clip(rental.started_at, rental.ended_at, now=now, since=since)


def running_interval(rental: Rental, *, now: float, since: float | None = None) -> tuple[float, float] | None:
    """Where the GPU bills apart: while the box ran (from `running_at` to the end, or to when it was first seen
    stopped for a higher bid: its disk bills on until the destroy), clipped the same way."""
    if rental.running_at is None:
        return None
    start = max(rental.running_at, rental.started_at or rental.running_at)
    end, preempted = rental.ended_at, rental.billing.preempted_at
    if preempted is not None:
        end = preempted if end is None else min(end, preempted)
    return _clip(start, end, now=now, since=since)


def rental_hours(rental: Rental, *, now: float, since: float | None = None) -> float:
    """Billed hours of one rental up to `now` (0 when it never billed)."""
    span = interval(rental, now=now, since=since)
    return 0.0 if span is None else (span[1] - span[0]) / 3600.0


def rental_spend(rental: Rental, *, now: float, since: float | None = None) -> Spend:
    """What one rental, its end already settled by `billed`, cost in [since, now]."""
    hours = rental_hours(rental, now=now, since=since)
    if not rental.split_billing:
        return Spend(hours, rental.rate_usd_h * hours)
    disk_rate = rental.disk_usd_h or 0.0
    gpu_rate = max(0.0, rental.rate_usd_h - disk_rate)
    span = running_interval(rental, now=now, since=since)
    gpu_hours = 0.0 if span is None else (span[1] - span[0]) / 3600.0
    gpu_usd, disk_usd = gpu_rate * gpu_hours, disk_rate * hours
    return Spend(hours, gpu_usd + disk_usd, gpu_hours, gpu_usd, disk_usd)


def price(rental: Rental, *, now: float, since: float | None = None, charge: Charge | None = None) -> Spend:
    """What one rental cost in [since, now]: the one price `deploy cost` and the fleet lines both show. `charge`:
    the provider's own charge rows for it, where they were asked."""
    return rental_spend(billed(rental, charge), now=now, since=since)
