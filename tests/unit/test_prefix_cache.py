"""Backbone KV prefix reuse: the LRU's byte bound and eviction, the digests, and greedy codes identical with and
without the reuse on the tiny model (a voice's reference clip as stored codes, and a conversation grown turn by turn
from its own generated codes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_runtime.engine.prefix_cache import PrefixCache, prefix_keys
from csm_runtime.engine.types import GenerationParams, Segment
from tests.fakes.runtime_fixtures import TEXTS, tiny_generator

FRAMES = 6


def _kv(rows: int, layers: int = 2) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Layers of [kv=2, rows, hd=4] float32: 32 bytes per row per tensor."""
    return [torch.randn(2, rows, 4) for _ in range(layers)], [torch.randn(2, rows, 4) for _ in range(layers)]


def _nbytes(rows: int, layers: int = 2) -> int:
    return 2 * layers * 2 * rows * 4 * 4


def test_the_cache_stays_under_its_byte_bound_and_evicts_the_least_recently_used():
    cache = PrefixCache(max_bytes=3 * _nbytes(10))
    for name in (b"a", b"b", b"c"):
        assert cache.store([name], [10], *_kv(10))
    assert cache.bytes == 3 * _nbytes(10) and cache.stats()["entries"] == 3
    assert cache.lookup([b"a"], [10])[0] == 10  # a is now the most recently used
    assert cache.store([b"d"], [10], *_kv(10))  # evicts b, the least recently used
    assert cache.bytes <= cache.max_bytes
    assert cache.lookup([b"b"], [10]) == (0, None)
    assert [cache.lookup([k], [10])[0] for k in (b"a", b"c", b"d")] == [10, 10, 10]
    assert cache.store([b"e"], [20], *_kv(20))  # twice the size: evicts the two least recently used (a, c)
    assert cache.bytes == _nbytes(10) + _nbytes(20) <= cache.max_bytes
    assert cache.lookup([b"a"], [10])[1] is None and cache.lookup([b"c"], [10])[1] is None
    assert cache.lookup([b"d"], [10])[0] == 10 and cache.lookup([b"e"], [20])[0] == 20
    stats = cache.stats()
    assert stats["evictions"] == 3 and stats["misses"] == 3 and stats["hits"] == 6


def test_an_entry_over_the_whole_budget_is_not_kept_and_zero_disables():
    cache = PrefixCache(max_bytes=_nbytes(10))
    assert not cache.store([b"big"], [11], *_kv(11))
    assert cache.bytes == 0 and cache.lookup([b"big"], [11]) == (0, None)
    off = PrefixCache(0)
    assert not off.enabled and not off.store([b"a"], [1], *_kv(1)) and off.bytes == 0


def test_a_longer_prefix_replaces_the_entries_it_contains_and_answers_for_them():
    cache = PrefixCache(max_bytes=10 * _nbytes(10))
    cache.store([b"voice"], [10], *_kv(10))
    k, v = _kv(25)
    cache.store([b"voice", b"turn1"], [10, 25], k, v)
    assert cache.stats()["entries"] == 1 and cache.bytes == _nbytes(25)
    length, entry = cache.lookup([b"voice", b"other"], [10, 30])  # a different second turn: the voice part hits
    assert length == 10 and entry.length == 25 and entry.keys[0] is k[0]
    assert cache.lookup([b"voice", b"turn1", b"turn2"], [10, 25, 40])[0] == 25  # the longest stored one


def test_a_prefix_shared_by_two_entries_survives_the_eviction_of_either():
    cache = PrefixCache(max_bytes=2 * _nbytes(20))
    cache.store([b"voice", b"conv-a"], [10, 20], *_kv(20))
    cache.store([b"voice", b"conv-b"], [10, 20], *_kv(20))
    assert cache.stats()["entries"] == 2
    assert cache.lookup([b"voice", b"conv-a"], [10, 20])[0] == 20
    cache.store([b"new"], [20], *_kv(20))  # evicts conv-b, the least recently used, which the voice pointed at
    length, entry = cache.lookup([b"voice"], [10])
    assert length == 10 and entry.length == 20 and cache.lookup([b"voice", b"conv-b"], [10, 20])[0] == 10
    cache.lookup([b"new"], [20])
    cache.store([b"newer"], [20], *_kv(20))  # evicts conv-a: nothing holds the voice any more
    assert cache.lookup([b"voice"], [10]) == (0, None)


def test_digests_follow_every_row_before_the_boundary():
    tokens = [1, 2, 3, 4, 5, 6]
    codes = torch.zeros(6, 32, dtype=torch.long)
    is_audio = torch.tensor([False, False, True, True, False, False])
    codes[2, 0] = 7
    base = prefix_keys(tokens, codes, is_audio, [4, 6])
    assert base == prefix_keys(tokens, codes.clone(), is_audio, [4, 6]) and len(set(base)) == 2
    other = codes.clone()
    other[3, 5] = 9  # an audio row's code: both boundaries after it change
    assert all(a != b for a, b in zip(base, prefix_keys(tokens, other, is_audio, [4, 6]), strict=True))
    ignored = codes.clone()
    ignored[5, 1] = 9  # codes on a text row are never read: same digests
    assert prefix_keys(tokens, ignored, is_audio, [4, 6]) == base
    assert prefix_keys([1, 2, 3, 4, 5, 7], codes, is_audio, [4, 6])[0] == base[0]  # rows after b do not count


@pytest.fixture(scope="module")
def gens():
    """Two tiny generators on the same weights: prefix reuse on, and off."""
    return tiny_generator(max_streams=2), tiny_generator(max_streams=2, prefix_cache_mb=0)


def _voice(gen, frames: int = 25, seed: int = 0) -> Segment:
    """A stored voice: a transcript and its clip's codes [32, frames] (random codes: the tiny random Mimi maps most
    noise clips to the same few codes)."""
    codes = np.random.default_rng(seed).integers(0, 2048, (32, frames))
    return Segment("A reference clip, read aloud.", 1, codes=codes)


def _prefilled(gen, text, speaker, context) -> torch.Tensor:
    """The hidden state prefill leaves for a lone stream (then the stream is cancelled)."""
    sid = gen.add_stream(text, speaker, context, GenerationParams(max_audio_ms=800, greedy=True))
    hidden = gen.hidden[0].clone()
    gen.cancel(sid)
    gen.step()
    return hidden


def test_a_voice_prefix_is_reused_and_greedy_codes_are_identical(gens):
    warm, cold = gens
    voice = _voice(warm)
    before = warm.prefix_stats()
    first = warm.frame_codes(TEXTS[0], 1, [voice], frames=FRAMES)  # stores the voice's prefix
    second = warm.frame_codes(TEXTS[1], 1, [voice], frames=FRAMES)  # reuses it
    stats = warm.prefix_stats()
    assert stats["misses"] == before["misses"] + 1 and stats["hits"] == before["hits"] + 1
    assert stats["reused_rows"] - before["reused_rows"] == warm.prompt.rows(TEXTS[1], 1, [voice]).boundaries[-1]
    np.testing.assert_array_equal(first, cold.frame_codes(TEXTS[0], 1, [voice], frames=FRAMES))
    np.testing.assert_array_equal(second, cold.frame_codes(TEXTS[1], 1, [voice], frames=FRAMES))
    # Bit for bit: the reused prefix holds what a fresh prefill computes.
    assert torch.equal(_prefilled(warm, TEXTS[2], 0, [voice]), _prefilled(cold, TEXTS[2], 0, [voice]))
    assert cold.prefix_stats()["hits"] == 0 and cold.prefix_stats()["entries"] == 0
    # The context is really used: without it the codes differ.
    assert not np.array_equal(second, warm.frame_codes(TEXTS[1], 1, (), frames=FRAMES))


def test_a_conversation_grown_turn_by_turn_reuses_its_earlier_turns(gens):
    """Each turn's context is the voice then every earlier turn with its generated codes; with reuse, each request
    copies in everything before the newest turn and the codes stay those of a fresh prefill."""
    warm, cold = gens
    voice = _voice(warm, seed=1)
    turns, context = ["Hi, who is this?", "It is me again.", "Nice to hear you."], [voice]
    for i, text in enumerate(turns):
        before = warm.prefix_stats()
        rows = warm.prompt.rows(text, i % 2, context)
        ours = warm.frame_codes(text, i % 2, context, frames=FRAMES)
        stats = warm.prefix_stats()
        if i == 0:
            assert stats["misses"] == before["misses"] + 1
        else:  # the previous request stored its whole context: everything but the newest turn is reused
            assert stats["hits"] == before["hits"] + 1
            assert stats["reused_rows"] - before["reused_rows"] == rows.boundaries[-2]
        assert stats["entries"] == before["entries"] + (1 if i == 0 else 0)  # a longer prefix replaces its parent
        np.testing.assert_array_equal(ours, cold.frame_codes(text, i % 2, context, frames=FRAMES))
        context = [*context, Segment(text, i % 2, codes=ours.T.copy())]


def test_a_reused_prefix_lands_in_the_row_of_a_stream_joining_a_batch(gens):
    """The prefix is copied into the joining stream's own row (row 1 here), not row 0."""
    warm, _ = gens
    voice = _voice(warm, seed=2)
    alone = warm.frame_codes(TEXTS[2], 0, [voice], frames=FRAMES)  # stores the prefix
    hits = warm.prefix_stats()["hits"]
    params = GenerationParams(max_audio_ms=FRAMES * 80, greedy=True)
    other = warm.add_stream(TEXTS[0], 1, (), params)
    sid = warm.add_stream(TEXTS[2], 0, [voice], params)
    assert warm.prefix_stats()["hits"] == hits + 1
    codes = {other: [], sid: []}
    while warm.active():
        for ev in warm.step():
            if ev.chunk is not None:
                codes[ev.stream_id].append(ev.chunk.codes)
    np.testing.assert_array_equal(np.concatenate(codes[sid]), alone)


def test_a_different_reference_clip_misses(gens):
    warm, _ = gens
    warm.frame_codes(TEXTS[0], 1, [_voice(warm, seed=3)], frames=1)
    misses = warm.prefix_stats()["misses"]
    warm.frame_codes(TEXTS[0], 1, [_voice(warm, seed=4)], frames=1)
    assert warm.prefix_stats()["misses"] == misses + 1
