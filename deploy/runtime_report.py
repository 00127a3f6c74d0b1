"""What `deploy provision` prints once the runtime answers: endpoint, token file, hourly rate, and the price of an
hour of audio from the profile's measured RTF. Pure functions over the ledger row, so they are tested directly.

Cost of audio: the profile's chosen setting decodes `max_streams` streams together, each at `rtf` (wall seconds per
second of audio, the same for every stream of the batch). One box-hour therefore yields max_streams / rtf hours of
audio, and an hour of audio costs rate x rtf / max_streams, when the box is kept full.
"""

from __future__ import annotations

from typing import Any


def usd_per_audio_hour(rate_usd_h: float, rtf: float | None, streams: int | None) -> float | None:
    if rtf is None or rtf <= 0:
        return None
    return rate_usd_h * rtf / max(1, int(streams or 1))


def summary(rental: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The JSON `deploy provision --json` prints (a superset of the box-only summary)."""
    meta = rental.meta
    profile = meta.get("profile") or state.get("profile")
    rtf = (profile or {}).get("rtf")
    streams = (profile or {}).get("max_streams")
    return {
        "endpoint": meta.get("endpoint"),
        "access": meta.get("access"),
        "token_file": meta.get("token_file"),
        "model": meta.get("model"),
        "runtime_mode": meta.get("runtime_mode"),
        "profile": profile,
        "usd_per_audio_hour": usd_per_audio_hour(rental.rate_usd_h, rtf, streams),
        "timings_s": state.get("timings", {}),
    }


def text(rental: Any, info: dict[str, Any]) -> str:
    lines = [
        f"ready: rental {rental.id} = {rental.provider} {rental.provider_id} ({rental.gpu_name}), "
        f"{rental.rate_usd_h:.3f} USD/h",
    ]
    if info.get("endpoint"):
        if info["access"] == "ssh-tunnel":
            how = (
                f"on the box, reached through an SSH tunnel (`deploy generate` opens one; `deploy tunnel {rental.id}`)"
            )
        else:
            how = "reached directly (any HTTP client with the bearer token: curl, the openai SDK)"
        lines.append(f"  endpoint:   {info['endpoint']} {how}")
        lines.append(f"  token:      {info['token_file']} (mode 0600; the ledger keeps only its sha256)")
        lines.append(f"  model:      {info['model']} ({info['runtime_mode']} runtime)")
    profile = info.get("profile")
    if profile and profile.get("rtf") is not None:
        cost = info["usd_per_audio_hour"]
        rt = "real time" if profile.get("realtime") else "SLOWER than real time"
        lines.append(
            f"  profile:    {profile['slug']} ({profile['source']}): {profile['candidate']}, RTF {profile['rtf']:.3f} "
            f"per stream x {profile['max_streams']} streams ({rt})"
        )
        lines.append(f"  audio cost: ${cost:.4f} per hour of audio with the box kept busy")
    elif info.get("endpoint"):
        lines.append("  profile:    none (safe defaults); no measured RTF, so no cost per hour of audio")
    if info.get("endpoint"):
        lines.append(f'  try:        deploy generate {rental.id} "Hello there." -o hello.wav')
    lines.append(f"  then:       deploy teardown {rental.id}; deploy cost")
    return "\n".join(lines)
