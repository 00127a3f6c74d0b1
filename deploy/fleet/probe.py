"""Asking one replica how it is: /ready, and the counters of its Prometheus /metrics (requests served, audio
seconds, active streams, queue depth). Never raises for a replica that is down: the answer says why."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from csm_common.prometheus import samples


@dataclass(frozen=True)
class Probe:
    """What one replica said just now: /ready, and the counters of /metrics."""

    ready: bool
    detail: str
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return int(self.metrics.get("speech_requests", 0))

    @property
    def busy(self) -> bool:
        return self.metrics.get("active_streams", 0) > 0 or self.metrics.get("queue_depth", 0) > 0


_SPEECH = "/v1/audio/speech"
_GAUGES = {
    "csm_audio_seconds_total": "audio_seconds",
    "csm_active_streams": "active_streams",
    "csm_queue_depth": "queue_depth",
}


def parse_metrics(text: str) -> dict[str, float]:
    """The numbers the fleet needs from a replica's Prometheus text: speech requests served (2xx), audio seconds,
    active streams, queue depth, requests refused with 429 (every slot and the queue full; a counter)."""
    out = {"speech_requests": 0.0, "audio_seconds": 0.0, "active_streams": 0.0, "queue_depth": 0.0, "rejected_429": 0.0}
    for s in samples(text):
        if s.name == "csm_requests_rejected_total" and s.labels.get("reason") == "queue_full":  # answered 429
            out["rejected_429"] += s.value
        elif s.name == "csm_requests_total" and s.labels.get("route") == _SPEECH:
            if re.fullmatch(r"2\d\d", s.labels.get("status", "")):
                out["speech_requests"] += s.value
        elif s.name in _GAUGES:
            out[_GAUGES[s.name]] = s.value
    return out


def probe(url: str, token: str, *, timeout: float = 5.0, with_metrics: bool = True, verify: Any = True) -> Probe:
    """GET /ready (and /metrics) with the replica's token. Never raises for a replica that is down: says why.
    `verify`: an https replica's pinned certificate (fleet.model.replica_verify); another one is "no answer"."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout, verify=verify) as client:
            r = client.get("/ready")
            ready, detail = r.status_code == 200, f"/ready {r.status_code}"
            metrics = parse_metrics(client.get("/metrics").text) if with_metrics else {}
    except httpx.HTTPError as exc:
        return Probe(False, f"no answer ({type(exc).__name__})")
    return Probe(ready, detail, metrics)
