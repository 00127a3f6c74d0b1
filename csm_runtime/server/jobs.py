"""A request's side of the scheduler: the errors it can get, the Job the worker thread advances, and the Ticket the
request holds (an async iterator of PCM chunks fed from the worker through the request's asyncio.Queue)."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from csm_runtime.engine.longtext import Utterance
    from csm_runtime.server.scheduler import Scheduler


class SchedulerError(Exception):
    """Base of the errors a request can get before or while it streams."""


class NotReadyError(SchedulerError):
    """The model is still loading or warming up (or failed to)."""


class QueueFullError(SchedulerError):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"server busy: all stream slots and the queue are full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class ShuttingDownError(SchedulerError):
    """The server is draining; no new streams."""


class StreamFailedError(SchedulerError):
    """The generator refused or failed a stream; `bad_input` says whether it was the request's fault."""

    def __init__(self, message: str, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


@dataclass(eq=False)
class Job:
    """One request's stream as the worker sees it; only the worker mutates it after submit."""

    pieces: list[str]
    speaker: int
    context: list
    params: Any
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    submitted: float = field(default_factory=time.monotonic)
    deadline: float = math.inf
    sid: int | None = None
    admitted: float | None = None
    first_chunk: float | None = None
    samples: int = 0
    cancel_requested: bool = False
    done: bool = False
    utterance: Utterance | None = None  # made by the worker, which knows the generator's limits
    codes: list = field(default_factory=list)  # each chunk's generated codes [frames, 32], every piece in order


class Ticket:
    """What a request holds: an async iterator of float32 PCM chunks, and `cancel()`."""

    def __init__(self, job: Job, scheduler: Scheduler) -> None:
        self._job = job
        self._scheduler = scheduler
        self.reason: str | None = None  # eos | max_audio | cancelled | timeout | shutdown, once ended
        self._get: asyncio.Future | None = None

    async def next(self, timeout: float | None = None):
        """The next PCM chunk, or None at the end; raises StreamFailedError, or TimeoutError after `timeout`.

        The pending `queue.get()` survives a timeout (no chunk can be lost between two polls).
        """
        if self._get is None:
            self._get = asyncio.ensure_future(self._job.queue.get())
        done, _ = await asyncio.wait({self._get}, timeout=timeout)
        if not done:
            raise TimeoutError
        kind, value = self._get.result()
        self._get = None
        if kind == "chunk":
            return value
        if kind == "end":
            self.reason = value
            return None
        raise value

    @property
    def ended(self) -> bool:
        return self._job.done

    @property
    def pieces_started(self) -> int:
        """How many of the request's pieces got a stream (all of them unless the audio cap ended it early; the last
        one started may have been cut by the cap): what a conversation turn says it said."""
        utterance = self._job.utterance
        return len(self._job.pieces) if utterance is None else min(utterance.index, len(self._job.pieces))

    @property
    def codes(self) -> list:
        """The codes of the chunks generated so far ([frames, 32] arrays in order): complete once next() ended."""
        return self._job.codes

    def cancel(self) -> None:
        """Free the slot (idempotent); safe after the stream ended."""
        if self._get is not None:
            self._get.cancel()
            self._get = None
        self._scheduler.cancel(self._job)
