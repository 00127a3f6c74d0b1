"""What an hour of audio costs: from a profile's measured speed (at full load) or from what was served so far.

A profile's chosen setting decodes `max_streams` streams together, each at `rtf` (wall seconds per second of audio,
the same for every stream of the batch). One box-hour therefore yields max_streams / rtf hours of audio when the box
is kept full, and an hour of audio costs the hourly rate over that. For a fleet, capacities and rates add up.

What was served comes from the replicas' own counters (`csm_audio_seconds_total` on /metrics), read and kept in the
ledger as readings (below), so a window's audio is measured, and a window nobody read is unknown, never 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


def audio_hours_per_hour(rtf: float | None, streams: int | None) -> float | None:
    """Hours of audio one box makes per hour at full load; None without a measured RTF."""
    if rtf is None or rtf <= 0:
        return None
    return max(1, int(streams or 1)) / rtf


def usd_per_audio_hour(usd_per_hour: float, audio_hours_per_hour_: float | None) -> float | None:
    """The price of an hour of audio at full load (None when the speed is unknown)."""
    if not audio_hours_per_hour_:
        return None
    return usd_per_hour / audio_hours_per_hour_


def usd_per_audio_hour_served(usd: float, audio_seconds: float) -> float | None:
    """What an hour of audio has cost so far: dollars spent over the audio hours served (None before any)."""
    if audio_seconds <= 0:
        return None
    return usd / (audio_seconds / 3600.0)


# --- what a replica served in a window: readings of its audio counter ------------------------------------------------
# A replica's `csm_audio_seconds_total` (its /metrics) counts from 0 when its server starts and dies with it. The
# fleet reports (`deploy status`, `deploy cost`) and the autoscale loop read it; each reading is kept in the ledger
# as an event on the rental (`AUDIO_SAMPLE`, the counter's value as its detail), at most one per `SAMPLE_GAP_S`, so a
# window's audio is the difference of two readings of the same counter, never a guess.

AUDIO_SAMPLE = "audio_seconds"
SAMPLE_GAP_S = 60.0


@dataclass(frozen=True, order=True)
class Point:
    """One reading of a replica's audio counter: at `at`, `seconds` of audio since its server started."""

    at: float
    seconds: float


def points_from_events(events: Iterable[Mapping[str, Any]]) -> list[Point]:
    """The counter readings among a rental's ledger events (rows with `at`, `kind`, `detail`)."""
    out = []
    for e in events:
        if e.get("kind") != AUDIO_SAMPLE:
            continue
        try:
            out.append(Point(float(e["at"]), float(e["detail"])))
        except (TypeError, ValueError, KeyError):
            continue  # a row this version cannot read is no reading
    return sorted(out)


def last_reading(ledger: Any, rental_id: int) -> Point | None:
    """The latest reading the ledger keeps for a rental (one indexed query)."""
    row = ledger.db.execute(
        "SELECT at, detail FROM events WHERE rental_id=? AND kind=? ORDER BY id DESC LIMIT 1", (rental_id, AUDIO_SAMPLE)
    ).fetchone()
    found = points_from_events([{"at": row[0], "kind": AUDIO_SAMPLE, "detail": row[1]}]) if row else []
    return found[0] if found else None


def record_sample(ledger: Any, rental_id: int, seconds: float, *, last: Point | None = None) -> bool:
    """Keep one reading of a replica's counter in the ledger, unless the last one kept (`last`, else looked up) is
    under SAMPLE_GAP_S old. Returns whether it was written."""
    last = last if last is not None else last_reading(ledger, rental_id)
    now = ledger.clock()
    if last is not None and 0 <= now - last.at < SAMPLE_GAP_S:
        return False
    ledger.event(rental_id, AUDIO_SAMPLE, repr(float(seconds)))
    return True


def counted_span(started_at: float, points: Iterable[Point], *, since: float, now: float) -> tuple[Point, Point] | None:
    """The first and last readings inside [since, now] of the counter's unbroken run, or None when fewer than two.

    The rental's start is a reading of 0 (the server, and its counter, started after it). A reading below the one
    before it is a server restart: the counter began again at an unknown moment between them, so the run starts at
    that reading."""
    chain = [Point(started_at, 0.0), *sorted(p for p in points if started_at <= p.at <= now)]
    for i in range(len(chain) - 1, 0, -1):
        if chain[i].seconds < chain[i - 1].seconds:
            chain = chain[i:]
            break
    inside = [p for p in chain if p.at >= since]
    return (inside[0], inside[-1]) if len(inside) >= 2 and inside[-1].at > inside[0].at else None
