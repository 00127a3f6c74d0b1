"""Failures the emulator injects: per-endpoint faults, outages, and vast's per-endpoint rate limits."""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Fault:
    method: str
    path_re: str
    status: int
    times: int  # how many requests it hits; -1 = forever
    body: dict[str, Any] = field(default_factory=dict)
    retry_after: str | None = "0"

    def hits(self, method: str, path: str) -> bool:
        return self.times != 0 and self.method in (method, "*") and re.search(self.path_re, path) is not None

    def spend(self) -> None:
        if self.times > 0:
            self.times -= 1


def endpoint(method: str, path: str) -> str:
    """'GET /api/v0/instances/7000001/' -> 'GET /api/v0/instances/{id}/': the unit vast rate-limits."""
    return f"{method} " + re.sub(r"/\d+(?=/)", "/{id}", path)


class RateLimiter:
    """vast's limits: a minimum interval between requests to one endpoint per key (measured from the last request
    that got through), and a per-minute budget for offer searches. Real time, not the emulated clock: it is the
    client's pacing that is tested."""

    def __init__(self, intervals: dict[str, float], searches_per_minute: int | None):
        self.intervals = dict(intervals)
        self.searches_per_minute = searches_per_minute
        self.last: dict[tuple[str, str], float] = {}
        self.searches: dict[str, deque[float]] = {}
        self.refused: list[str] = []  # endpoints that answered 429, in order (tests count them)

    def check(self, key: str, method: str, path: str) -> float | None:
        """None if the request may pass (and it is counted), else the threshold it broke."""
        now = time.monotonic()
        name = endpoint(method, path)
        if name == "POST /api/v0/bundles/" and self.searches_per_minute:
            window = self.searches.setdefault(key, deque())
            while window and now - window[0] >= 60:
                window.popleft()
            if len(window) >= self.searches_per_minute:
                self.refused.append(name)
                return 60.0 / self.searches_per_minute
            window.append(now)
            return None
        interval = self.intervals.get(name)
        if interval is None:
            return None
        last = self.last.get((key, name))
        if last is not None and now - last < interval:
            self.refused.append(name)
            return interval
        self.last[(key, name)] = now
        return None


def too_frequent(method: str, path: str, threshold: float) -> dict[str, Any]:
    """The 429 body vast documents per endpoint: destroy answers in the usual error shape, the others `detail` only
    (which vastai prints as `"msg": null`)."""
    text = f"API requests too frequent endpoint threshold={threshold:g}"
    if method == "DELETE":
        return {"success": False, "error": "rate_limit_exceeded", "msg": text}
    return {"detail": text}
