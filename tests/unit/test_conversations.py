"""The conversation store's bounds (idle TTL on an injected clock, number, memory; least recently used first) and
the context fitting of server/context.py (voice first, newest turns kept within the frame budget and the cache)."""

from __future__ import annotations

import numpy as np
import pytest

from csm_runtime.engine.longtext import Limits, Utterance
from csm_runtime.engine.types import GenerationParams, Segment
from csm_runtime.server.context import Part, fit, parts
from csm_runtime.server.conversations import TURN_OVERHEAD_BYTES, ConversationStore, make_turn
from csm_runtime.server.errors import APIError


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def codes(frames: int) -> np.ndarray:
    return np.arange(32 * frames, dtype=np.int64).reshape(32, frames) % 2048


def store(clock=None, **kw):
    evicted = []
    s = ConversationStore(
        ttl_s=kw.get("ttl_s", 60.0),
        max_count=kw.get("max_count", 100),
        max_bytes=kw.get("max_bytes", 1 << 20),
        clock=clock or Clock(),
        wall=lambda: 5_000_000.0,
        on_evict=lambda reason, n: evicted.extend([reason] * n),
    )
    return s, evicted


def test_a_turn_keeps_its_codes_as_int16_and_counts_its_bytes():
    turn = make_turn(2, "Hello there.", codes(10), "generated", created=7)
    assert turn.codes.dtype == np.int16 and turn.frames == 10
    assert np.array_equal(turn.codes, codes(10))
    assert turn.nbytes == 32 * 10 * 2 + len(b"Hello there.") + TURN_OVERHEAD_BYTES
    assert turn.public() == {"speaker": 2, "text": "Hello there.", "frames": 10, "source": "generated", "created": 7}
    assert make_turn(0, "text only", None, "added").frames == 0
    assert make_turn(0, "no frames", np.zeros((32, 0)), "generated").codes is None
    with pytest.raises(ValueError):
        make_turn(0, "wrong shape", np.zeros((8, 3)), "added")


def test_an_idle_conversation_expires_after_the_ttl_and_use_restarts_its_clock():
    clock = Clock()
    s, evicted = store(clock, ttl_s=60)
    s.append("a", make_turn(0, "one", codes(2), "added"))
    s.append("b", make_turn(0, "two", codes(2), "added"))
    clock.t += 50
    assert len(s.use("a")) == 1  # used: a's 60 s start again
    assert s.expires_at(s.get("a")) == 5_000_060
    clock.t += 15  # b idle 65 s, a 15 s
    assert s.get("b") is None and s.get("a") is not None
    assert evicted == ["ttl"] and s.stats() == (1, s.get("a").nbytes)
    clock.t += 45  # get() does not count as use: a is now idle 60 s
    s.sweep()
    assert s.get("a") is None and evicted == ["ttl", "ttl"] and s.stats() == (0, 0)
    assert s.use("a") == []  # unknown: no turns, nothing created
    assert s.stats() == (0, 0)


def test_over_the_number_limit_the_least_recently_used_goes_first():
    clock = Clock()
    s, evicted = store(clock, max_count=3)
    for cid in "abc":
        s.append(cid, make_turn(0, cid, None, "added"))
        clock.t += 1
    s.use("a")  # now b is the least recently used
    s.append("d", make_turn(0, "d", None, "added"))
    assert [c for c in "abcd" if s.get(c)] == ["a", "c", "d"] and evicted == ["count"]
    s.append("c", make_turn(0, "c again", None, "added"))  # an existing one: nothing evicted
    assert s.stats()[0] == 3 and evicted == ["count"]


def test_over_the_memory_limit_others_go_least_recently_used_first_then_its_own_oldest_turns():
    turn_bytes = make_turn(0, "x", codes(100), "added").nbytes
    s, evicted = store(max_bytes=3 * turn_bytes)
    s.append("a", make_turn(0, "x", codes(100), "added"))
    s.append("b", make_turn(0, "x", codes(100), "added"))
    s.append("c", make_turn(0, "x", codes(100), "added"))
    assert evicted == [] and s.stats() == (3, 3 * turn_bytes)
    s.append("c", make_turn(0, "x", codes(100), "added"))
    assert s.get("a") is None and s.get("b") and evicted == ["memory"]
    conv = s.append("c", make_turn(0, "y", codes(100), "added"))  # b goes; c alone holds 3 turns
    assert s.get("b") is None and len(conv.turns) == 3 and evicted == ["memory", "memory"]
    conv = s.append("c", make_turn(0, "z", codes(100), "added"))  # c alone over: its oldest turn goes
    assert [t.text for t in conv.turns] == ["x", "y", "z"] and s.stats() == (1, 3 * turn_bytes)
    assert s.delete("c") and not s.delete("c") and s.stats() == (0, 0)


def rows(text, speaker):
    return len(text) + 2


def part(text, frames, speaker=0):
    return Part(Segment(text, speaker, codes=codes(frames) if frames else None), frames)


def test_fit_keeps_the_voice_first_then_the_newest_turns_within_the_frame_budget():
    voice = [part("reference", 9)]  # 10 frames with its end frame
    history = [part(f"turn {i}", 9) for i in range(5)]
    kept = fit(voice, history, ["Hello."], 0, GenerationParams(max_audio_ms=800), Limits(max_context_frames=35))
    assert [p.segment.text for p in kept] == ["reference", "turn 3", "turn 4"]
    text_only = fit(voice, [part("a", 0), part("b", 0)], ["Hi."], 0, GenerationParams(), Limits(max_context_frames=10))
    assert [p.segment.text for p in text_only] == ["reference", "a", "b"]  # text costs no audio frames


def test_fit_leaves_the_request_its_audio_before_context_and_refuses_a_request_that_cannot_fit():
    limits = Limits(max_seq_len=100, max_context_frames=1000, text_rows=rows)
    history = [part("old", 4), part("new", 4)]  # 5 + 5 rows each
    params = GenerationParams(max_audio_ms=60 * 80)  # 60 frames
    # voice 11 + 11 = 22 rows, text 8, audio 60: 10 rows left, one turn
    kept = fit([part("reference", 10)], history, ["Hello."], 0, params, limits)
    assert [p.segment.text for p in kept] == ["reference", "new"]
    assert fit([], history, ["Hello."], 0, params, limits) == history  # 32 rows left without the voice
    with pytest.raises(APIError) as err:
        fit([part("reference", 10)], history, ["x" * 77], 0, params, limits)
    assert err.value.status == 400 and err.value.code == "context_too_long" and "100" in err.value.message
    # a long audio cap is shortened by the engine rather than refused; context is dropped first
    assert fit([], history, ["Hello."], 0, GenerationParams(max_audio_ms=10**6), limits) == []


def test_a_context_of_stored_codes_counts_its_frames_in_the_plan():
    """Utterance reads a segment's frames from its codes when it has no waveform (stored voices, turns)."""
    limits = Limits(max_seq_len=200, max_context_frames=1000, text_rows=rows)
    context = [s.segment for s in parts([Segment("reference", 0, codes=codes(50))]) for _ in [0]]
    piece = Utterance("Hello.", 0, context, GenerationParams(max_audio_ms=10**6), limits).next()
    assert [s.text for s in piece.context] == ["reference"]
    assert piece.params.max_audio_ms // 80 == 200 - (11 + 51) - 8  # the cache's room after voice and text
