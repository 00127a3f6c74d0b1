"""Cost report: what each rental cost by the ledger, per rental, per UTC day, in total; open rentals count up to now.

Two ways a rental bills:
- rate x time (local, ssh, and any rental recorded without a disk rate): from the clock's start to its end;
- vast's split (the rental has `disk_usd_h`): the disk from the provider's start (create) to the confirmed destroy,
  the GPU (`rate_usd_h - disk_usd_h`, since vast's `dph_total` includes the disk) only while the box ran (from
  `running_at`). A box that never ran costs its disk alone.
The end is when the accepted destroy returned (the ledger's `ended_at`), narrowed to the end of the provider's charge
rows where that falls between the destroy's request (`meta["destroy_asked_at"]`) and its answer: vastai exits a
second or more after vast took the destroy.
Where the provider reports its own charges (vast's charges endpoint), they are shown beside ours: their amount also
holds bandwidth, which only vast counts; an instance vast has no charge row for yet is "pending", never $0.
Pure functions over `Rental` rows, so they are tested directly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from deploy.ledger import Rental
from deploy.providers.records import Charge

PENDING = "pending"  # the provider reports charges, but none for this instance (or day) yet


@dataclass(frozen=True)
class Spend:
    """One rental's cost in a window: hours billed, and the dollars (GPU and disk apart where billed apart)."""

    hours: float
    usd: float
    gpu_hours: float | None = None  # split billing only
    gpu_usd: float | None = None
    disk_usd: float | None = None


@dataclass
class CostLine:
    key: str  # rental id, or a day (YYYY-MM-DD)
    provider: str
    provider_id: str | None
    gpu_name: str | None
    rate_usd_h: float
    hours: float
    usd: float
    open: bool
    theirs_usd: float | None = None
    theirs: str | None = None  # None: the provider reports no charges; "pending": no row yet; "billed"
    gpu_usd: float | None = None
    disk_usd: float | None = None
    theirs_items: dict[str, float] = field(default_factory=dict)  # gpu, disk, bandwidth where vast itemises

    @property
    def diff_usd(self) -> float | None:
        return None if self.theirs_usd is None else self.theirs_usd - self.usd

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["diff_usd"] = self.diff_usd
        return d


@dataclass
class CostReport:
    by: str
    since: float | None
    now: float
    lines: list[CostLine] = field(default_factory=list)
    provider_note: str | None = None  # why the provider's charges are missing, when they are

    @property
    def total_usd(self) -> float:
        return sum(x.usd for x in self.lines)

    @property
    def theirs_total_usd(self) -> float | None:
        vals = [x.theirs_usd for x in self.lines if x.theirs_usd is not None]
        return sum(vals) if vals else None

    @property
    def pending(self) -> int:
        return sum(1 for x in self.lines if x.theirs == PENDING)

    def as_dict(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "since": self.since,
            "now": self.now,
            "lines": [x.as_dict() for x in self.lines],
            "total_usd": self.total_usd,
            "provider_total_usd": self.theirs_total_usd,
            "provider_pending": self.pending,
            "provider_note": self.provider_note,
        }


def _clip(start: float | None, end: float | None, *, now: float, since: float | None) -> tuple[float, float] | None:
    if start is None:
        return None
    lo = start if since is None else max(start, since)
    hi = min(end if end is not None else now, now)
    return (lo, hi) if hi > lo else None


def interval(rental: Rental, *, now: float, since: float | None = None) -> tuple[float, float] | None:
    """The billed interval of one rental clipped to [since, now]; None if it never billed or lies outside."""
    return _clip(rental.started_at, rental.ended_at, now=now, since=since)


def running_interval(rental: Rental, *, now: float, since: float | None = None) -> tuple[float, float] | None:
    """Where the GPU bills apart: while the box ran (from `running_at` to the end), clipped the same way."""
    if rental.running_at is None:
        return None
    start = max(rental.running_at, rental.started_at or rental.running_at)
    return _clip(start, rental.ended_at, now=now, since=since)


def rental_hours(rental: Rental, *, now: float, since: float | None = None) -> float:
    """Billed hours of one rental up to `now` (0 when it never billed)."""
    span = interval(rental, now=now, since=since)
    return 0.0 if span is None else (span[1] - span[0]) / 3600.0


def rental_spend(rental: Rental, *, now: float, since: float | None = None) -> Spend:
    """What one rental cost in [since, now]: rate x time, or vast's split (GPU while running + disk throughout)."""
    hours = rental_hours(rental, now=now, since=since)
    if not rental.split_billing:
        return Spend(hours, rental.rate_usd_h * hours)
    disk_rate = rental.disk_usd_h or 0.0
    gpu_rate = max(0.0, rental.rate_usd_h - disk_rate)
    span = running_interval(rental, now=now, since=since)
    gpu_hours = 0.0 if span is None else (span[1] - span[0]) / 3600.0
    gpu_usd, disk_usd = gpu_rate * gpu_hours, disk_rate * hours
    return Spend(hours, gpu_usd + disk_usd, gpu_hours, gpu_usd, disk_usd)


def split_days(start: float, end: float) -> list[tuple[str, float]]:
    """(UTC day, seconds) pieces of an interval."""
    out = []
    t = start
    while t < end:
        day = dt.datetime.fromtimestamp(t, dt.timezone.utc).date()
        next_midnight = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.timezone.utc).timestamp()
        piece_end = min(end, next_midnight)
        out.append((day.isoformat(), piece_end - t))
        t = piece_end
    return out


def billed_until(rental: Rental, charge: Charge | None) -> Rental:
    """The rental with its end narrowed to where the provider's charges end, when they end within its destroy."""
    asked = rental.meta.get("destroy_asked_at")
    end = charge.end if charge is not None else None
    if rental.ended_at is None or end is None or not isinstance(asked, (int, float)):
        return rental
    return dataclasses.replace(rental, ended_at=end) if asked <= end <= rental.ended_at else rental


def _charge(charges: dict[str, dict[str, Charge]], rental: Rental) -> Charge | None:
    return (charges.get(rental.provider) or {}).get(rental.provider_id or "")


def _theirs(line: CostLine, charges: dict[str, Charge] | None, provider_id: str | None) -> None:
    if charges is None or not provider_id:
        return
    charge = charges.get(provider_id)
    if charge is None:
        line.theirs = PENDING
        return
    line.theirs, line.theirs_usd, line.theirs_items = "billed", charge.amount, dict(charge.items)


def cost_report(
    rentals: list[Rental],
    *,
    now: float,
    since: float | None = None,
    by: str = "instance",
    provider_charges: dict[str, dict[str, Charge]] | None = None,
) -> CostReport:
    """`provider_charges`: per provider that reports charges (vast), what it billed per instance id."""
    if by not in ("instance", "day"):
        raise ValueError(f"--by must be instance or day, not {by!r}")
    report = CostReport(by=by, since=since, now=now)
    charges = provider_charges or {}
    rentals = [billed_until(r, _charge(charges, r)) for r in rentals]
    if by == "instance":
        for r in rentals:
            if interval(r, now=now, since=since) is None:
                continue
            spend = rental_spend(r, now=now, since=since)
            line = CostLine(
                str(r.id),
                r.provider,
                r.provider_id,
                r.gpu_name,
                r.rate_usd_h,
                spend.hours,
                spend.usd,
                r.ended_at is None,
                gpu_usd=spend.gpu_usd,
                disk_usd=spend.disk_usd,
            )
            _theirs(line, charges.get(r.provider), r.provider_id)
            report.lines.append(line)
        return report
    return _by_day(report, rentals, charges, now=now, since=since)


def _by_day(
    report: CostReport, rentals: list[Rental], charges: dict[str, dict[str, Charge]], *, now: float, since: float | None
) -> CostReport:
    """Ours per UTC day (each piece of each rental's window priced as its own window), and the provider's charge
    rows spread over the days they cover, in proportion to time."""
    ours: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    open_days: set[str] = set()
    asked = set()  # days holding a rental of a provider that reports charges
    for r in rentals:
        span = interval(r, now=now, since=since)
        if span is None:
            continue
        t = span[0]
        for day, seconds in split_days(*span):
            piece = rental_spend(r, now=min(now, t + seconds), since=t)
            ours[day][0] += piece.hours
            ours[day][1] += piece.usd
            t += seconds
            if r.ended_at is None:
                open_days.add(day)
            if r.provider in charges:
                asked.add(day)
    theirs: dict[str, float] = defaultdict(float)
    for per_instance in charges.values():
        for charge in per_instance.values():
            if charge.start is None or charge.end is None or charge.end <= charge.start:
                continue
            for day, seconds in split_days(charge.start, charge.end):
                theirs[day] += charge.amount * seconds / (charge.end - charge.start)
    for day in sorted(ours):
        hours, usd = ours[day]
        line = CostLine(day, "*", None, None, 0.0, hours, usd, day in open_days)
        if day in theirs:
            line.theirs, line.theirs_usd = "billed", theirs[day]
        elif day in asked:
            line.theirs = PENDING
        report.lines.append(line)
    return report


def parse_since(text: str | None) -> float | None:
    """YYYY-MM-DD (UTC midnight), an ISO time, or a unix timestamp."""
    if not text:
        return None
    if text.replace(".", "", 1).isdigit():
        return float(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r} is not a date (YYYY-MM-DD), an ISO time or a unix timestamp") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()
