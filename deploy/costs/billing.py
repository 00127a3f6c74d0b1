"""Cost report: rate x time from the ledger, per rental, per UTC day, in total; open rentals count up to now.

Where the provider reports its own charges (vast's charges endpoint), they are shown beside ours with the difference.
Pure functions over `Rental` rows, so they are tested directly.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from deploy.ledger import Rental


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "since": self.since,
            "now": self.now,
            "lines": [x.as_dict() for x in self.lines],
            "total_usd": self.total_usd,
            "provider_total_usd": self.theirs_total_usd,
            "provider_note": self.provider_note,
        }


def interval(rental: Rental, *, now: float, since: float | None = None) -> tuple[float, float] | None:
    """The billed interval of one rental clipped to [since, now]; None if it never billed or lies outside."""
    if rental.started_at is None:
        return None
    start = rental.started_at if since is None else max(rental.started_at, since)
    end = rental.ended_at if rental.ended_at is not None else now
    end = min(end, now)
    return (start, end) if end > start else None


def rental_hours(rental: Rental, *, now: float, since: float | None = None) -> float:
    """Billed hours of one rental up to `now` (0 when it never billed): what every cost figure multiplies."""
    span = interval(rental, now=now, since=since)
    return 0.0 if span is None else (span[1] - span[0]) / 3600.0


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


def cost_report(
    rentals: list[Rental],
    *,
    now: float,
    since: float | None = None,
    by: str = "instance",
    provider_charges: dict[str, dict[str, float]] | None = None,
) -> CostReport:
    """`provider_charges`: per provider that reports charges (vast), what it billed per instance id."""
    if by not in ("instance", "day"):
        raise ValueError(f"--by must be instance or day, not {by!r}")
    report = CostReport(by=by, since=since, now=now)
    if by == "instance":
        for r in rentals:
            if interval(r, now=now, since=since) is None:
                continue
            hours = rental_hours(r, now=now, since=since)
            theirs = None
            charges = (provider_charges or {}).get(r.provider)
            if charges is not None and r.provider_id:
                theirs = charges.get(r.provider_id, 0.0)
            report.lines.append(
                CostLine(
                    str(r.id),
                    r.provider,
                    r.provider_id,
                    r.gpu_name,
                    r.rate_usd_h,
                    hours,
                    r.rate_usd_h * hours,
                    r.ended_at is None,
                    theirs,
                )
            )
        return report
    days: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    open_days: set[str] = set()
    for r in rentals:
        span = interval(r, now=now, since=since)
        if span is None:
            continue
        for day, seconds in split_days(*span):
            days[day][0] += seconds / 3600
            days[day][1] += r.rate_usd_h * seconds / 3600
            if r.ended_at is None:
                open_days.add(day)
    for day in sorted(days):
        hours, usd = days[day]
        report.lines.append(CostLine(day, "*", None, None, 0.0, hours, usd, day in open_days))
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
