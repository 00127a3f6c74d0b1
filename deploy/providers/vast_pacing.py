"""How fast we may call vast.ai, and how long we keep trying: one gate for the whole process, one retry policy.

vast limits each endpoint per API key to a minimum interval between requests (429 with no Retry-After when broken,
docs api-reference/rate-limits-and-errors; the thresholds are the `x-rate-limit` blocks of its OpenAPI files), and
offer searches to 10 a minute. `GATE` spaces our calls per endpoint: the next call to an endpoint starts no sooner
than its interval after the previous one *ended* (the request reaches vast some time after the CLI starts, never
after it exits), across threads (a fleet provisions from several). `Backoff` is the retry schedule for calls that
failed in a way worth repeating: bounded exponential delays, stopping at a deadline.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Pace:
    """One endpoint's documented limit: a minimum interval (seconds) and/or a number of calls per minute."""

    interval_s: float = 0.0
    per_minute: int = 0


# vastai command (its first two words) -> vast's limit for the endpoint it calls.
PACES: dict[str, Pace] = {
    "show instance": Pace(2.0),  # GET /api/v0/instances/{id}/
    "show instances": Pace(1.0),  # GET /api/v1/instances/
    "create instance": Pace(4.5),  # PUT /api/v0/asks/{id}/
    "destroy instance": Pace(3.0),  # DELETE /api/v0/instances/{id}/
    "label instance": Pace(1.0),  # PUT /api/v0/instances/{id}/
    "show invoices-v1": Pace(1.0),  # GET /api/v0/charges/
    "search offers": Pace(per_minute=10),  # POST /api/v0/bundles/
}
MAX_BACKOFF_S = 15.0  # one wait between tries never exceeds this
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})  # vast busy or broken for a moment; anything else is an answer


class Gate:
    """Per endpoint: one call at a time, each starting at least the endpoint's interval after the previous ended,
    and no more calls in any minute than the endpoint allows. A 429 pushes the endpoint's next slot further out."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self._clock, self._sleep = clock, sleep
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._free_at: dict[str, float] = {}
        self._ended: dict[str, deque[float]] = {}
        self.waited_s = 0.0  # total time spent waiting for a slot (bench/ reads it)

    @contextmanager
    def turn(self, endpoint: str, pace: Pace) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(endpoint, threading.Lock())
        with lock:
            wait = self._wait_s(endpoint, pace)
            if wait > 0:
                self.waited_s += wait
                self._sleep(wait)
            try:
                yield
            finally:
                end = self._clock()
                with self._guard:
                    self._free_at[endpoint] = max(self._free_at.get(endpoint, 0.0), end + pace.interval_s)
                    if pace.per_minute:
                        self._ended.setdefault(endpoint, deque()).append(end)

    def hold(self, endpoint: str, seconds: float) -> None:
        """vast refused this endpoint as too frequent: nobody in this process calls it for `seconds`."""
        with self._guard:
            self._free_at[endpoint] = max(self._free_at.get(endpoint, 0.0), self._clock() + seconds)

    def _wait_s(self, endpoint: str, pace: Pace) -> float:
        with self._guard:
            now = self._clock()
            wait = self._free_at.get(endpoint, 0.0) - now
            if pace.per_minute:
                ended = self._ended.setdefault(endpoint, deque())
                while ended and now - ended[0] >= 60.0:
                    ended.popleft()
                if len(ended) >= pace.per_minute:
                    wait = max(wait, ended[0] + 60.0 - now)
            return max(0.0, wait)


GATE = Gate()  # the process's one gate: every VastCli shares it


class Backoff:
    """Delays between tries of one call: `first_s`, doubling, at most MAX_BACKOFF_S each, for `window_s` after the
    first failure and never past `deadline` (monotonic). `next_delay` returns None when the time is up."""

    def __init__(self, window_s: float, *, deadline: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.window_s, self.deadline, self._clock = window_s, deadline, clock
        self.first_failure: float | None = None
        self.tries = 0
        self._delay = 0.0

    def next_delay(self, first_s: float) -> float | None:
        now = self._clock()
        self.tries += 1
        if self.first_failure is None:
            self.first_failure = now
        self._delay = max(first_s, 0.5) if self._delay == 0 else min(self._delay * 2, MAX_BACKOFF_S)
        limit = self.first_failure + self.window_s
        if self.deadline is not None:
            limit = min(limit, self.deadline)
        return self._delay if now + self._delay <= limit else None

    def spent_s(self) -> float:
        return 0.0 if self.first_failure is None else self._clock() - self.first_failure
