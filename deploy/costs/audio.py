"""What an hour of audio costs: from a profile's measured speed (at full load) or from what was served so far.

A profile's chosen setting decodes `max_streams` streams together, each at `rtf` (wall seconds per second of audio,
the same for every stream of the batch). One box-hour therefore yields max_streams / rtf hours of audio when the box
is kept full, and an hour of audio costs the hourly rate over that. For a fleet, capacities and rates add up.
"""

from __future__ import annotations


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
