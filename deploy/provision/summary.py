"""What `deploy provision` prints once it is done: the rental, and once the runtime answers its endpoint, token
file, hourly rate, and the price of an hour of audio from the profile's measured speed (deploy/costs/audio.py).
Pure functions over the ledger row and the provision's context, so they are tested directly.
"""

from __future__ import annotations

import shlex
from typing import Any

from deploy.costs.audio import audio_hours_per_hour, usd_per_audio_hour


def summary(rental: Any, ctx: Any) -> dict[str, Any]:
    """The JSON `deploy provision --json` prints: the rental, and with a runtime its endpoint and audio cost."""
    server = rental.server
    box = {
        "id": rental.id,
        "provider": rental.provider,
        "provider_id": rental.provider_id,
        "label": rental.label,
        "gpu_name": rental.gpu_name,
        "rate_usd_h": rental.rate_usd_h,
        "ssh": f"{rental.ssh_user}@{rental.ssh_host}:{rental.ssh_port}" if rental.ssh_host else None,
        "status": rental.status,
        "check": (ctx.check_output or "").strip().splitlines()[:1],
        "timings_s": ctx.timings,
    }
    if ctx.runtime is None:
        return box
    profile = server.profile or ctx.profile
    rtf = (profile or {}).get("rtf")
    streams = (profile or {}).get("max_streams")
    return box | {
        "endpoint": server.endpoint,
        "access": server.access,
        "token_file": server.token_file,
        "model": server.model,
        "runtime_mode": server.runtime_mode,
        "profile": profile,
        "usd_per_audio_hour": usd_per_audio_hour(rental.rate_usd_h, audio_hours_per_hour(rtf, streams)),
        "tls_cert": server.tls_cert,  # the pinned certificate of an https endpoint
        "tls_cert_sha256": server.tls_cert_sha256,
        "hf_token": server.hf_token,  # where the Hub token came from (never the token)
        "watchdog": rental.watchdog.as_dict() if rental.watchdog else None,
    }


def box_text(rental: Any) -> str:
    return (
        f"ready: rental {rental.id} = {rental.provider} {rental.provider_id} ({rental.gpu_name}, "
        f"{rental.rate_usd_h:.3f} USD/h); `deploy ssh {rental.id}`, `deploy teardown {rental.id}`"
    )


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
        lines += client_lines(info)
    profile = info.get("profile")
    if profile and profile.get("rtf") is not None:
        cost = info["usd_per_audio_hour"]
        rt = "real time" if profile.get("realtime") else "SLOWER than real time"
        lines.append(
            f"  profile:    {profile['slug']} ({profile['source']}): {profile['candidate']}, RTF {profile['rtf']:.3f} "
            f"per stream x {profile['max_streams']} stream{'s' if profile['max_streams'] != 1 else ''} ({rt})"
        )
        lines.append(f"  audio cost: ${cost:.4f} per hour of audio with the box kept busy")
    elif info.get("endpoint"):
        lines.append("  profile:    none (safe defaults); no measured RTF, so no cost per hour of audio")
    watchdog = info.get("watchdog")
    if watchdog and watchdog.get("running"):
        lines.append(f"  watchdog:   the box destroys itself at {watchdog['limits']} (no laptop needed)")
    elif watchdog:
        lines.append(f"  watchdog:   NOT running ({watchdog.get('error')}): the box bills until `deploy teardown`")
    if info.get("endpoint"):
        lines.append(f'  try:        deploy generate {rental.id} "Hello there." -o hello.wav')
    lines.append(f"  then:       deploy teardown {rental.id}; deploy cost")
    return "\n".join(lines)


def client_lines(info: dict[str, Any]) -> list[str]:
    """Ready-to-paste clients for a direct endpoint: the openai SDK and curl, trusting only the pinned certificate
    when the endpoint is https (a server presenting another one is refused before the token is sent)."""
    endpoint, token_file, cert = info.get("endpoint"), info.get("token_file"), info.get("tls_cert")
    if info.get("access") == "ssh-tunnel" or not endpoint or not token_file:
        return []
    lines = []
    verify, cacert = "", ""
    if cert:
        sha = str(info.get("tls_cert_sha256") or "")
        lines.append(f"  tls:        certificate pinned: {cert} (sha256 {sha[:16]}…); no other is accepted")
        verify = f", http_client=httpx.Client(verify=ssl.create_default_context(cafile={str(cert)!r}))"
        cacert = f"--cacert {shlex.quote(str(cert))} "
    imports = "import httpx, openai, ssl; " if cert else "import openai; "
    lines.append(
        f"  python:     {imports}client = openai.OpenAI(base_url={endpoint + '/v1'!r}, "
        f"api_key=open({str(token_file)!r}).read().strip(){verify})"
    )
    body = '{"model": "tts-1", "input": "Hello there.", "voice": "alloy", "response_format": "wav"}'
    lines.append(
        f'  curl:       curl {cacert}-H "Authorization: Bearer $(cat {shlex.quote(str(token_file))})" '
        f"-H 'Content-Type: application/json' -d '{body}' {endpoint}/v1/audio/speech -o hello.wav"
    )
    return lines
