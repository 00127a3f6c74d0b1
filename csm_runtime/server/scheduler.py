"""The scheduler: one worker thread owns the generator and runs the frame loop for every request at once.

Requests from the event loop land in a bounded queue. Between two frame steps the worker cancels what was
cancelled (client gone, timeout), admits queued requests while slots are free, then runs ONE batched decode step
and routes each stream's chunk to its request's asyncio.Queue. Because the generator is only ever touched by this
thread, it needs no locks, and loading + warm-up run here too (so `/ready` can answer while they happen).

A request may be several pieces (a long text split into sentences, engine/longtext.py): its ticket spans them all.
When the generator ends one piece, the next is added to the batch right away, in the same pass and before any queued
request, with the earlier pieces' text and audio as context; so the gap between two pieces' audio is one prefill and
the first chunk's frames, and cancel, timeout and `max_audio_ms` (the total) hold for the request as a whole.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from csm_runtime.engine.longtext import Limits, Utterance, limits_of
from csm_runtime.server.jobs import Job, NotReadyError, QueueFullError, ShuttingDownError, StreamFailedError, Ticket

log = logging.getLogger("csm_runtime.scheduler")

FRAME_S = 0.08  # one CSM frame is 80 ms of audio


class Scheduler:
    """`load()` builds the generator on the worker thread; `submit()` is called from the event loop."""

    def __init__(
        self,
        load: Callable[[], Any],
        *,
        queue_size: int,
        request_timeout_s: float,
        metrics=None,
        max_streams: int | None = None,
    ) -> None:
        self._load = load
        self.queue_size = queue_size
        self.request_timeout_s = request_timeout_s
        self.metrics = metrics
        self._max_streams_override = max_streams
        self.generator = None
        self._plan_limits = Limits()
        self.state = "loading"  # loading -> warming -> ready | failed; stopped at the end
        self.error: BaseException | None = None
        self.warmup_info: dict = {}
        self._cv = threading.Condition()
        self._pending: collections.deque[Job] = collections.deque()
        self._cancels: list[Job] = []
        self._continuing: collections.deque[Job] = collections.deque()  # between two pieces, slot briefly taken
        self._active: dict[int, Job] = {}
        self._calls: collections.deque[tuple[Callable[[Any], Any], asyncio.Future]] = collections.deque()
        self._outstanding = 0  # pending + active, guarded by _cv
        self._stopping = False
        self._hard_deadline = math.inf
        self._recent_walls: collections.deque[float] = collections.deque(maxlen=32)
        self._thread = threading.Thread(target=self._run, name="csm-scheduler", daemon=True)

    # ---- event-loop side -------------------------------------------------------------------------------------
    @property
    def max_streams(self) -> int:
        if self._max_streams_override:
            return self._max_streams_override
        return int(getattr(self.generator, "max_streams", 1) or 1)

    def start(self) -> None:
        self._thread.start()

    def submit(self, text: str | list[str], speaker: int, context: list, params: Any) -> Ticket:
        """Queue a request: `text` is one piece, or a list of pieces said in order with the earlier ones as context."""
        if self._stopping:
            raise ShuttingDownError("server is shutting down")
        if self.state != "ready":
            raise NotReadyError(f"model not ready ({self.state})")
        pieces = [text] if isinstance(text, str) else list(text)
        job = Job(pieces, speaker, context, params, asyncio.get_running_loop(), asyncio.Queue())
        job.deadline = job.submitted + self.request_timeout_s
        with self._cv:
            if self._outstanding >= self.max_streams + self.queue_size:
                raise QueueFullError(self._retry_after())
            self._outstanding += 1
            self._pending.append(job)
            self._set_queue_gauge()
            self._cv.notify()
        return Ticket(job, self)

    async def call(self, fn: Callable[[Any], Any]) -> Any:
        """Run `fn(generator)` on the worker thread between two frame steps and return its result (or raise its
        error). Work that touches the model or codec outside a stream (encoding an uploaded clip with Mimi) goes
        through here, so it never races the frame loop or a CUDA graph capture."""
        if self._stopping:
            raise ShuttingDownError("server is shutting down")
        if self.state != "ready":
            raise NotReadyError(f"model not ready ({self.state})")
        future = asyncio.get_running_loop().create_future()
        with self._cv:
            self._calls.append((fn, future))
            self._cv.notify()
        return await future

    def _run_calls(self) -> None:
        """Worker side of `call`: run every queued function, hand each result to its waiting coroutine."""
        while True:
            with self._cv:
                if not self._calls:
                    return
                fn, future = self._calls.popleft()
            try:
                result, error = fn(self.generator), None
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who turns it into its own error
                result, error = None, exc
            loop = future.get_loop()

            def settle(future=future, result=result, error=error):
                if future.done():
                    return
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

            with contextlib.suppress(RuntimeError):  # the caller's loop is closed
                loop.call_soon_threadsafe(settle)

    def cancel(self, job: Job) -> None:
        """Thread-safe and idempotent; the worker frees the slot before its next frame step."""
        with self._cv:
            if job.done or job.cancel_requested:
                return
            job.cancel_requested = True
            self._cancels.append(job)
            self._cv.notify()

    def stop(self, grace_s: float = 0.0, join_timeout: float = 30.0) -> None:
        """Refuse new work, let running streams finish for `grace_s`, then cancel the rest and end the thread."""
        with self._cv:
            self._stopping = True
            self._hard_deadline = time.monotonic() + grace_s
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(grace_s + join_timeout)

    def snapshot(self) -> dict:
        with self._cv:
            return {"state": self.state, "active": len(self._active), "queued": len(self._pending)}

    def _retry_after(self) -> int:
        wall = sum(self._recent_walls) / len(self._recent_walls) if self._recent_walls else 1.0
        waiting = len(self._pending) + 1
        return int(min(60, max(1, math.ceil(wall * waiting / max(1, self.max_streams)))))

    def _set_queue_gauge(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(len(self._pending))
            self.metrics.active_streams.set(len(self._active))

    # ---- worker side -----------------------------------------------------------------------------------------
    def _push(self, job: Job, kind: str, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the request's loop is closed: nobody is listening any more
            job.loop.call_soon_threadsafe(job.queue.put_nowait, (kind, value))

    def _finish(self, job: Job, reason: str, error: BaseException | None = None) -> None:
        """End a job exactly once: tell its request, free its slot, count it."""
        if job.done:
            return
        job.done = True
        if job.sid is not None:
            self._active.pop(job.sid, None)
        with contextlib.suppress(ValueError):
            self._continuing.remove(job)
        now = time.monotonic()
        if self.metrics:
            self.metrics.finished.labels(reason if error is None else "error").inc()
            audio_s = job.samples / getattr(self.generator, "sample_rate", 24_000)
            if job.admitted is not None and audio_s > 0 and reason in ("eos", "max_audio"):
                self.metrics.rtf.observe((now - job.admitted) / audio_s)
        if job.admitted is not None:
            self._recent_walls.append(now - job.admitted)
        self._push(job, "error" if error is not None else "end", error if error is not None else reason)
        with self._cv:
            self._outstanding -= 1
            self._set_queue_gauge()

    def _fail_calls(self) -> None:
        """Calls still queued when the worker ends get ShuttingDownError (their callers would wait forever)."""
        with self._cv:
            calls, self._calls = list(self._calls), collections.deque()
        for _, future in calls:
            with contextlib.suppress(RuntimeError):
                future.get_loop().call_soon_threadsafe(
                    lambda f=future: f.done() or f.set_exception(ShuttingDownError("server is shutting down"))
                )

    def _run(self) -> None:
        try:
            self.generator = self._load()
            self._plan_limits = limits_of(self.generator)
            self.state = "warming"
            t0 = time.monotonic()
            self.warmup_info = dict(self.generator.warmup() or {})
            log.info("warm-up done in %.1f s: %s", time.monotonic() - t0, self.warmup_info)
            if self.metrics:
                self.metrics.watch_gpu_memory(str(getattr(self.generator, "device", "cpu")))
                if hasattr(self.generator, "prefix_stats"):
                    self.metrics.watch_prefix_cache(self.generator.prefix_stats)
                self.metrics.ready.set(1)
            self.state = "ready"
        except BaseException as exc:  # noqa: BLE001 - reported on /ready and in the log, the process stays up
            self.state, self.error = "failed", exc
            log.exception("model load / warm-up failed")
            return
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - fail every open request rather than hang it
            log.exception("scheduler loop crashed")
            self.state, self.error = "failed", exc
            for job in list(self._active.values()) + list(self._pending):
                self._finish(job, "error", StreamFailedError(f"generator crashed: {exc}"))
        finally:
            self._fail_calls()
            if self.state == "ready":
                self.state = "stopped"
            if self.metrics:
                self.metrics.ready.set(0)

    def _loop(self) -> None:
        gen = self.generator
        while True:
            with self._cv:
                if self._stopping and not self._active and not self._pending and not self._continuing:
                    self._fail_calls()
                    return
                idle = not self._active and not self._pending and not self._cancels and not self._continuing
                if idle and not self._calls:
                    self._cv.wait(timeout=0.5)
                    continue
                cancels, self._cancels = self._cancels, []
            self._run_calls()
            now = time.monotonic()
            for job in cancels:
                self._drop(job, "cancelled")
            hard_stop = self._stopping and now >= self._hard_deadline
            for job in list(self._active.values()) + list(self._continuing):
                if hard_stop or now >= job.deadline:
                    self._drop(job, "shutdown" if hard_stop else "timeout")
            self._admit(gen, now, hard_stop)
            if not self._active:
                continue
            batch = len(self._active)
            t0 = time.monotonic()
            events = gen.step()
            if self.metrics:
                self.metrics.batch_size.observe(batch)
                self.metrics.frames.inc(batch)
                self.metrics.audio_seconds.inc(batch * FRAME_S)
                self.metrics.step_seconds.observe(time.monotonic() - t0)
            for ev in events:
                self._route(ev)

    def _drop(self, job: Job, reason: str) -> None:
        """Cancel a job wherever it is (running in the generator or still queued)."""
        if job.done:
            return
        if job.sid is not None and job.sid in self._active:
            self.generator.cancel(job.sid)
        elif job in self._continuing:
            pass  # between two pieces: no stream to cancel, _finish takes it off the list
        else:
            with self._cv, contextlib.suppress(ValueError):
                self._pending.remove(job)
        self._finish(job, reason)

    def _admit(self, gen, now: float, hard_stop: bool) -> None:
        while self._continuing and len(self._active) < self.max_streams:  # requests between pieces go first
            if not self._start_piece(gen, self._continuing.popleft()):
                return
        while True:
            with self._cv:
                if not self._pending or len(self._active) >= self.max_streams:
                    return
                job = self._pending.popleft()
                self._set_queue_gauge()
            if job.cancel_requested or hard_stop or now >= job.deadline:
                reason = "cancelled" if job.cancel_requested else "shutdown" if hard_stop else "timeout"
                self._finish(job, reason)
                continue
            try:
                job.utterance = Utterance(job.pieces, job.speaker, job.context, job.params, self._plan_limits)
            except Exception as exc:  # noqa: BLE001 - a request the plan refuses fails alone
                self._finish(job, "error", StreamFailedError(str(exc), bad_input=isinstance(exc, ValueError)))
                continue
            if not self._start_piece(gen, job, queued=True):
                return

    def _start_piece(self, gen, job: Job, queued: bool = False) -> bool:
        """Add the job's next piece to the batch; False when every slot is busy (the job waits at the front)."""
        try:
            piece = job.utterance.next()
        except ValueError as exc:
            self._finish(job, "error", StreamFailedError(str(exc), bad_input=True))
            return True
        if piece is None:
            self._finish(job, job.utterance.reason)
            return True
        try:
            sid = gen.add_stream(piece.text, job.speaker, piece.context, piece.params)
        except Exception as exc:  # noqa: BLE001 - sorted below into "the slot is busy" and "this request fails"
            if type(exc).__name__ == "BatchFullError":
                if queued:
                    with self._cv:
                        self._pending.appendleft(job)
                        self._set_queue_gauge()
                else:
                    self._continuing.appendleft(job)
                return False
            bad = isinstance(exc, ValueError)
            log.warning("stream refused: %s", exc)
            self._finish(job, "error", StreamFailedError(str(exc), bad_input=bad))
            return True
        job.sid = sid
        if job.admitted is None:
            job.admitted = time.monotonic()
        self._active[sid] = job
        with self._cv:
            self._set_queue_gauge()
        return True

    def _route(self, ev) -> None:
        job = self._active.get(ev.stream_id)
        if job is None:
            return
        chunk = ev.chunk
        if chunk is not None and len(chunk.pcm):
            if job.first_chunk is None:
                job.first_chunk = time.monotonic()
                if self.metrics:
                    self.metrics.ttfa.observe(job.first_chunk - job.submitted)
            job.samples += len(chunk.pcm)
            job.utterance.add_audio(chunk.pcm)
            codes = getattr(chunk, "codes", None)
            if codes is not None:
                job.codes.append(codes)
            self._push(job, "chunk", chunk.pcm)
        if not ev.finished:
            return
        self._active.pop(ev.stream_id, None)
        job.sid = None
        if ev.reason not in ("eos", "max_audio"):
            self._finish(job, ev.reason or "eos")
            return
        job.utterance.piece_done()
        if job.cancel_requested:
            return  # the cancel pass ends it before the next step
        if not self._start_piece(self.generator, job):
            return  # waits in _continuing for the slot a cancelled stream frees
