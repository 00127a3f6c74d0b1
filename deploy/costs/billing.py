"""Cost report: what each rental cost by the ledger, per rental, per UTC day, in total; open rentals count up to now.

Each rental is priced by deploy/costs/price.py (rate x time or vast's split, up to where its billing ended; a rental
that vanished outside the flow carries the bound of its end). Where the provider reports its own charges (vast's charges endpoint), they are shown beside ours: their amount also
holds bandwidth, which only vast counts; an instance vast has no charge row for yet is "pending", never $0.
Each line says whether its rental is interruptible (rented at a bid) or on-demand, and the report carries both kinds'
hours and dollars apart with the preemptions (deploy/costs/split.py). Pure functions over `Rental` rows, so they are
tested directly.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from deploy.costs.price import (
    Spend,
    billed,
    billed_until,
    end_bound,
    interval,
    price,
    rental_hours,
    rental_spend,
    running_interval,
)
from deploy.costs.split import Split, cost_split, kind
from deploy.ledger import Rental
from deploy.providers.records import Charge

__all__ = [
    "PENDING",
    "CostLine",
    "CostReport",
    "Spend",
    "billed",
    "billed_until",
    "cost_report",
    "interval",
    "parse_since",
    "price",
    "rental_hours",
    "rental_spend",
    "running_interval",
    "split_days",
]

PENDING = "pending"  # the provider reports charges, but none for this instance (or day) yet


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
    ended_between: tuple[float, float] | None = None  # vanished outside the flow: ended after one, by the other
    end_source: str | None = None  # and what it is priced to (vast's charges, or the last time it was seen alive)
    ended_at: float | None = None  # where it is priced to end (None: still billing)
    kind: str | None = None  # interruptible | on-demand (None on a day's line, which adds both)
    bid_usd_h: float | None = None  # an interruptible rental's bid for the GPU

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
    split: Split = field(default_factory=Split)  # interruptible and on-demand apart, and the preemptions

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
            "split": self.split.as_dict(),
        }


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
    events: dict[int, list[dict[str, Any]]] | None = None,
) -> CostReport:
    """`provider_charges`: per provider that reports charges (vast), what it billed per instance id. `events`: each
    rental's ledger events, where its preemptions are."""
    if by not in ("instance", "day"):
        raise ValueError(f"--by must be instance or day, not {by!r}")
    report = CostReport(by=by, since=since, now=now)
    charges = provider_charges or {}
    report.split = cost_split(rentals, now=now, since=since, charges=charges, events=events)
    if by == "instance":
        for r in rentals:
            charge = _charge(charges, r)
            b = billed(r, charge)
            if interval(b, now=now, since=since) is None:
                continue
            spend = price(r, now=now, since=since, charge=charge)
            line = CostLine(
                str(r.id),
                r.provider,
                r.provider_id,
                r.gpu_name,
                r.rate_usd_h,
                spend.hours,
                spend.usd,
                b.ended_at is None,
                gpu_usd=spend.gpu_usd,
                disk_usd=spend.disk_usd,
                ended_at=b.ended_at,
                kind=kind(r),
                bid_usd_h=r.billing.bid_usd_h,
            )
            if bound := end_bound(r, charge):
                line.ended_between, line.end_source = (bound.lo, bound.hi), bound.source
            _theirs(line, charges.get(r.provider), r.provider_id)
            report.lines.append(line)
        return report
    rentals = [billed(r, _charge(charges, r)) for r in rentals]
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
