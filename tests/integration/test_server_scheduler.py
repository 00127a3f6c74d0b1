"""Scheduler logic: admission between frames, queue bound, cancel, timeout, shutdown.

These tests drive the scheduler with `DevFakeGenerator`, a DEVELOPMENT FAKE that has StreamingGenerator's API
(add_stream / step / cancel / warmup) but produces silence, so each case is deterministic and runs in milliseconds.
The server tests (tests/integration/test_server.py) run the real generator end to end.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from csm_runtime.engine.longtext import piece_cap_frames
from csm_runtime.engine.types import GenerationParams
from csm_runtime.server.jobs import NotReadyError, QueueFullError, ShuttingDownError, StreamFailedError
from csm_runtime.server.metrics import Metrics
from csm_runtime.server.scheduler import Scheduler


class BatchFullError(RuntimeError):
    """Same name as the generator's, which is how the scheduler recognises 'slot busy'."""


def frames(n: int) -> GenerationParams:
    return GenerationParams(max_audio_ms=n * 80)


class DevFakeGenerator:
    """DEVELOPMENT FAKE: StreamingGenerator's API, 1920 zero samples per frame, `max_audio_ms // 80` frames a stream;
    `added` records (text, context texts, frames) of every stream, `steps` the texts each step ran."""

    sample_rate = 24_000

    def __init__(self, max_streams: int = 2, step_gate: threading.Event | None = None) -> None:
        self.max_streams = max_streams
        self.streams: dict[int, list[int]] = {}  # sid -> [frames_left, index]
        self.batches: list[int] = []
        self.cancelled: list[int] = []
        self.added: list[tuple[str, list[str], int]] = []
        self.texts: dict[int, str] = {}
        self.steps: list[list[str]] = []
        self.step_gate = step_gate
        self.step_sleep = 0.0
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
        frames = params.max_audio_ms // 80
        self.streams[self._next] = [frames, 0]
        self.texts[self._next] = text
        self.added.append((text, [seg.text for seg in context], frames))
        return self._next

    def cancel(self, sid: int) -> None:
        self._touch()
        self.streams.pop(sid, None)
        self.cancelled.append(sid)

    def step(self) -> list:
        self._touch()
        if self.step_gate is not None:
            self.step_gate.wait(5)
        if self.step_sleep:
            time.sleep(self.step_sleep)
        self.batches.append(len(self.streams))
        self.steps.append([self.texts[sid] for sid in self.streams])
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
        tickets = [sched.submit("hi", 0, [], frames(5)) for _ in range(4)]
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
        first, second = sched.submit("a", 0, [], frames(2)), sched.submit("b", 0, [], frames(2))
        with pytest.raises(QueueFullError) as info:
            sched.submit("c", 0, [], frames(2))
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
        long = sched.submit("long", 0, [], frames(10_000))
        assert await long.next(timeout=5) is not None
        long.cancel()
        short = sched.submit("short", 0, [], frames(1))  # would wait forever if the slot were not freed
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
            await sched.submit("refuse", 0, [], frames(3)).next(timeout=5)
        assert info.value.bad_input
        return await drain(sched.submit("forever", 0, [], frames(10**9)))

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
            sched.submit("x", 0, [], frames(1))
        gate.set()
        while sched.state != "ready":
            await asyncio.sleep(0.01)
        ticket = sched.submit("long", 0, [], frames(10**9))
        await ticket.next(timeout=5)
        await asyncio.to_thread(sched.stop, 0.05)
        with pytest.raises(ShuttingDownError):
            sched.submit("y", 0, [], frames(1))
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


def test_pieces_follow_each_other_in_the_same_pass_with_earlier_pieces_as_context():
    """A three-piece request beside a long single one: every step runs both, so no step ever misses the pieces'
    stream (the next piece is added before the next frame), and each piece gets the earlier ones as context."""
    fake = DevFakeGenerator(max_streams=2)
    sched = make(fake)
    pieces = ["One.", "Two two.", "Three three three."]

    async def main():
        other = sched.submit("other", 0, [], frames(10**6))
        await other.next(timeout=5)
        result = await drain(sched.submit(pieces, 0, [], frames(10**6)))
        other.cancel()
        return result

    samples, reason = asyncio.run(main())
    sched.stop()
    caps = [piece_cap_frames(p) for p in pieces]
    assert (samples, reason) == (sum(caps) * 1920, "eos")
    added = [a for a in fake.added if a[0] != "other"]
    assert added == [(pieces[0], [], caps[0]), (pieces[1], pieces[:1], caps[1]), (pieces[2], pieces[:2], caps[2])]
    with_pieces = [s for s in fake.steps if set(s) & set(pieces)]
    first = fake.steps.index(with_pieces[0])
    assert fake.steps[first : first + len(with_pieces)] == with_pieces  # no step between two pieces
    assert len(with_pieces) == sum(caps)


def test_max_audio_is_the_total_across_pieces_and_cancel_ends_the_whole_request():
    fake = DevFakeGenerator(max_streams=1)
    sched = make(fake)
    cap = piece_cap_frames("First one.")
    long = ["Alpha " * 45, "Beta " * 55, "Gamma " * 45]  # 300+ frames each

    async def main():
        capped = await drain(sched.submit(["First one.", "Second one.", "Third."], 0, [], frames(cap + 3)))
        fake.step_sleep = 0.002  # ~2 s for the whole text: far longer than the cancel takes
        ticket = sched.submit(long, 0, [], frames(10**6))
        await ticket.next(timeout=5)
        ticket.cancel()
        cancelled = await drain(ticket)
        after = await drain(sched.submit("after", 0, [], frames(2)))  # the slot is free again
        return capped, cancelled, after

    capped, cancelled, after = asyncio.run(main())
    sched.stop()
    assert capped == ((cap + 3) * 1920, "max_audio")
    assert [a[2] for a in fake.added[:2]] == [cap, 3]  # no third piece was started
    assert cancelled[1] == "cancelled" and 0 < cancelled[0] < 300 * 1920
    assert [a[0] for a in fake.added[2:]] == [long[0], "after"] and after == (2 * 1920, "max_audio")


def test_a_request_between_pieces_goes_before_queued_ones():
    fake = DevFakeGenerator(max_streams=1)
    sched = make(fake)

    async def main():
        long = sched.submit(["A one.", "A two."], 0, [], frames(10**6))
        queued = sched.submit("queued", 0, [], frames(1))
        return await asyncio.gather(drain(long), drain(queued))

    asyncio.run(main())
    sched.stop()
    assert [a[0] for a in fake.added] == ["A one.", "A two.", "queued"]


def test_call_runs_on_the_worker_thread_between_steps_and_hands_back_results_and_errors():
    fake = DevFakeGenerator(max_streams=2)
    sched = make(fake)

    def boom(gen):
        raise ValueError("bad clip")

    async def main():
        ticket = sched.submit("hi", 0, [], frames(20))
        seen = await sched.call(lambda gen: (gen is fake, threading.get_ident()))
        with pytest.raises(ValueError, match="bad clip"):
            await sched.call(boom)
        return seen, await drain(ticket)

    (is_fake, thread), result = asyncio.run(main())
    sched.stop()
    assert is_fake and thread in fake.thread_ids  # the thread that runs the frame steps
    assert result == (20 * 1920, "max_audio")  # the stream went on around the calls

    async def after_stop():
        with pytest.raises(ShuttingDownError):
            await sched.call(lambda gen: None)

    asyncio.run(after_stop())
