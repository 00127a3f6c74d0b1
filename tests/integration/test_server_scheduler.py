"""Scheduler logic: admission between frames, queue bound, cancel, timeout, shutdown.

These tests drive the scheduler with `DevFakeGenerator`, a DEVELOPMENT FAKE that has StreamingGenerator's API
(add_stream / step / cancel / warmup) but produces silence, so each case is deterministic and runs in milliseconds.
The server tests (tests/integration/test_server.py) run the real generator end to end.
"""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from csm_runtime.server.metrics import Metrics
from csm_runtime.server.scheduler import NotReadyError, QueueFullError, Scheduler, ShuttingDownError, StreamFailedError


class BatchFullError(RuntimeError):
    """Same name as the generator's, which is how the scheduler recognises 'slot busy'."""


class DevFakeGenerator:
    """DEVELOPMENT FAKE: StreamingGenerator's API, 1920 zero samples per frame; `params` = frames or GenerationParams."""

    sample_rate = 24_000

    def __init__(self, max_streams: int = 2, step_gate: threading.Event | None = None) -> None:
        self.max_streams = max_streams
        self.streams: dict[int, list[int]] = {}  # sid -> [frames_left, index]
        self.batches: list[int] = []
        self.cancelled: list[int] = []
        self.step_gate = step_gate
        self._next = 0
        self.thread_ids: set[int] = set()

    def _touch(self) -> None:
        self.thread_ids.add(threading.get_ident())

    def warmup(self) -> dict:
        self._touch()
        return {"fake": True}

    def add_stream(self, text, speaker, context, params) -> int:
        self._touch()
        if text == "refuse":
            raise ValueError("text too long for the context window")
        if len(self.streams) >= self.max_streams:
            raise BatchFullError("all slots busy")
        self._next += 1
        frames = params.max_audio_ms // 80 if hasattr(params, "max_audio_ms") else int(params)
        self.streams[self._next] = [frames, 0]
        return self._next

    def cancel(self, sid: int) -> None:
        self._touch()
        self.streams.pop(sid, None)
        self.cancelled.append(sid)

    def step(self) -> list:
        self._touch()
        if self.step_gate is not None:
            self.step_gate.wait(5)
        self.batches.append(len(self.streams))
        events = []
        for sid, st in list(self.streams.items()):
            st[0] -= 1
            st[1] += 1
            chunk = SimpleNamespace(pcm=np.zeros(1920, np.float32), index=st[1], frames=1, is_last=st[0] == 0)
            done = st[0] == 0
            if done:
                del self.streams[sid]
            events.append(
                SimpleNamespace(stream_id=sid, chunk=chunk, finished=done, reason="max_audio" if done else None)
            )
        return events


def make(fake, **kw) -> Scheduler:
    sched = Scheduler(
        lambda: fake, queue_size=kw.pop("queue_size", 2), request_timeout_s=kw.pop("timeout", 30), metrics=Metrics()
    )
    sched.start()
    for _ in range(200):
        if sched.state == "ready":
            break
        threading.Event().wait(0.01)
    assert sched.state == "ready"
    return sched


async def drain(ticket) -> tuple[int, str]:
    n = 0
    while (chunk := await ticket.next(timeout=5)) is not None:
        n += len(chunk)
    return n, ticket.reason


def test_streams_share_steps_and_all_complete_on_one_thread():
    fake = DevFakeGenerator(max_streams=4)
    sched = make(fake)

    async def main():
        tickets = [sched.submit("hi", 0, [], 5) for _ in range(4)]
        return await asyncio.gather(*(drain(t) for t in tickets))

    results = asyncio.run(main())
    sched.stop()
    assert results == [(5 * 1920, "max_audio")] * 4
    assert max(fake.batches) > 1
    assert len(fake.thread_ids) == 1 and threading.get_ident() not in fake.thread_ids


def test_queue_bound_gives_queue_full_and_waiting_requests_run_later():
    gate = threading.Event()
    fake = DevFakeGenerator(max_streams=1, step_gate=gate)
    sched = make(fake, queue_size=1)

    async def main():
        first, second = sched.submit("a", 0, [], 2), sched.submit("b", 0, [], 2)
        with pytest.raises(QueueFullError) as info:
            sched.submit("c", 0, [], 2)
        assert info.value.retry_after_s >= 1
        gate.set()
        return await drain(first), await drain(second)

    assert asyncio.run(main()) == ((3840, "max_audio"), (3840, "max_audio"))
    assert max(fake.batches) == 1  # max_streams=1: the second waited for the first
    sched.stop()


def test_cancel_frees_the_slot_before_the_next_frame():
    fake = DevFakeGenerator(max_streams=1)
    sched = make(fake)

    async def main():
        long = sched.submit("long", 0, [], 10_000)
        assert await long.next(timeout=5) is not None
        long.cancel()
        short = sched.submit("short", 0, [], 1)  # would wait forever if the slot were not freed
        return await drain(short), await drain(long)

    short, long = asyncio.run(main())
    assert short == (1920, "max_audio")
    assert long[1] == "cancelled"
    assert fake.cancelled == [1] and sched.snapshot()["active"] == 0
    sched.stop()


def test_refused_stream_is_a_bad_input_error_and_timeout_ends_a_stream():
    fake = DevFakeGenerator(max_streams=2)
    sched = make(fake, timeout=0.2)

    async def main():
        with pytest.raises(StreamFailedError) as info:
            await sched.submit("refuse", 0, [], 3).next(timeout=5)
        assert info.value.bad_input
        return await drain(sched.submit("forever", 0, [], 10**9))

    samples, reason = asyncio.run(main())
    assert reason == "timeout" and samples > 0
    sched.stop()


def test_not_ready_then_shutdown_refuses_and_cancels_running_streams():
    gate = threading.Event()
    fake = DevFakeGenerator()
    fake.warmup = lambda: gate.wait(5) and {}
    sched = Scheduler(lambda: fake, queue_size=1, request_timeout_s=30)
    sched.start()

    async def main():
        with pytest.raises(NotReadyError):
            sched.submit("x", 0, [], 1)
        gate.set()
        while sched.state != "ready":
            await asyncio.sleep(0.01)
        ticket = sched.submit("long", 0, [], 10**9)
        await ticket.next(timeout=5)
        await asyncio.to_thread(sched.stop, 0.05)
        with pytest.raises(ShuttingDownError):
            sched.submit("y", 0, [], 1)
        return await drain(ticket)

    assert asyncio.run(main())[1] == "shutdown"
    assert sched.state == "stopped"


def test_failed_load_is_reported_not_raised():
    def boom():
        raise RuntimeError("no such model")

    sched = Scheduler(boom, queue_size=1, request_timeout_s=1)
    sched.start()
    sched.stop(0)
    assert sched.state == "failed" and "no such model" in str(sched.error)
