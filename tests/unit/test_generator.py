"""StreamingGenerator on tiny-random (CPU, float32): codes equal transformers' generate (across length buckets too),
batching equals alone (joining mid-batch, and when an earlier row ends and the rows compact), streaming audio equals
one-shot Mimi, sampling reproducible, chunking and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_runtime.engine.frame import buckets
from csm_runtime.engine.generator import BatchFullError
from csm_runtime.engine.loader import load_generator
from csm_runtime.engine.model import ModelLoadError
from csm_runtime.engine.types import GenerationParams, Segment
from tests.fakes.runtime_fixtures import TEXTS, hf_greedy_codes, tiny_generator

FRAMES = 24


@pytest.fixture(scope="module")
def gen():
    return tiny_generator()


def test_greedy_codes_equal_transformers_generate(gen):
    ours = gen.frame_codes(TEXTS[0], speaker=1, frames=FRAMES)
    ref = hf_greedy_codes(gen, TEXTS[0], 1, FRAMES)
    assert ours.shape == ref.shape == (FRAMES, 32)
    np.testing.assert_array_equal(ours, ref)


def test_greedy_codes_equal_transformers_generate_across_length_buckets(gen):
    """Attention over the used length only: with 32-position buckets the 24 frames cross two of them."""
    saved = gen.length_buckets
    gen.length_buckets = buckets(gen.settings.max_seq_len, 32)
    try:
        ours = gen.frame_codes(TEXTS[1], speaker=0, frames=FRAMES)
    finally:
        gen.length_buckets = saved
    np.testing.assert_array_equal(ours, hf_greedy_codes(gen, TEXTS[1], 0, FRAMES))


def test_greedy_codes_equal_transformers_generate_compiled():
    """Same check through torch.compile'd frame pieces (a cold compile takes tens of seconds on 2 cores)."""
    gen = tiny_generator(max_streams=2, compile="default")
    ours = gen.frame_codes(TEXTS[1], speaker=0, frames=FRAMES)
    np.testing.assert_array_equal(ours, hf_greedy_codes(gen, TEXTS[1], 0, FRAMES))


def _run_until_done(gen, ids):
    codes = {i: [] for i in ids}
    pcm = {i: [] for i in ids}
    reasons = {}
    while len(reasons) < len(ids):
        for ev in gen.step():
            if ev.stream_id not in codes:
                continue
            if ev.chunk is not None:
                codes[ev.stream_id].append(ev.chunk.codes)
                pcm[ev.stream_id].append(ev.chunk.pcm)
            if ev.finished:
                reasons[ev.stream_id] = ev.reason
    return {i: np.concatenate(codes[i]) for i in ids}, {i: np.concatenate(pcm[i]) for i in ids}, reasons


def test_batched_streams_equal_each_alone_even_when_joining_mid_batch(gen):
    frames = (12, 8, 6)
    alone = [gen.frame_codes(t, speaker=i, frames=n) for i, (t, n) in enumerate(zip(TEXTS, frames, strict=True))]
    alone_pcm = [gen.codec.decode_oneshot(torch.from_numpy(c.T.copy())) for c in alone]
    params = [GenerationParams(max_audio_ms=n * 80, greedy=True) for n in frames]
    first = gen.add_stream(TEXTS[0], 0, (), params[0])
    for _ in range(3):  # the others join mid-batch, at other positions, into slots with stale decoder state
        gen.step()
    later = [gen.add_stream(TEXTS[i], i, (), params[i]) for i in (1, 2)]
    codes, pcm, reasons = _run_until_done(gen, later)
    while gen.active():
        gen.step()
    for k, sid in enumerate(later, start=1):
        np.testing.assert_array_equal(codes[sid], alone[k])
        assert reasons[sid] == "max_audio"
        assert np.abs(pcm[sid] - alone_pcm[k]).max() <= 1e-4
    assert first not in gen._streams


def test_rows_compact_when_an_earlier_stream_ends_and_the_batch_bucket_shrinks():
    gen = tiny_generator(max_streams=4)
    frames = (3, 9, 7)
    alone = [gen.frame_codes(TEXTS[i], speaker=i, frames=n) for i, n in enumerate(frames)]
    alone_pcm = [gen.codec.decode_oneshot(torch.from_numpy(c.T.copy())) for c in alone]
    ids = [
        gen.add_stream(TEXTS[i], i, (), GenerationParams(max_audio_ms=n * 80, greedy=True))
        for i, n in enumerate(frames)
    ]
    assert gen._bucket()[0] == 4 and [gen._streams[i].row for i in ids] == [0, 1, 2]
    codes = {i: [] for i in ids}
    pcm = {i: [] for i in ids}
    seen = []
    while gen.active():
        for ev in gen.step():
            if ev.chunk is not None:
                codes[ev.stream_id].append(ev.chunk.codes)
                pcm[ev.stream_id].append(ev.chunk.pcm)
        if gen.active():
            seen.append((gen._bucket()[0], sorted(s.row for s in gen._streams.values())))
    assert seen[2] == (2, [0, 1])  # stream 0 ended after 3 frames: stream 2 moved into row 0, batch bucket 2
    assert seen[-1] == (1, [0])  # the last stream alone runs at batch 1, in row 0
    for k, sid in enumerate(ids):
        np.testing.assert_array_equal(np.concatenate(codes[sid]), alone[k])
        assert np.abs(np.concatenate(pcm[sid]) - alone_pcm[k]).max() <= 1e-4


def test_streaming_audio_equals_oneshot_decode(gen):
    chunks = list(gen.stream(TEXTS[2], 0, (), GenerationParams(max_audio_ms=10 * 80, greedy=True)))
    codes = np.concatenate([c.codes for c in chunks])
    pcm = np.concatenate([c.pcm for c in chunks])
    ref = gen.codec.decode_oneshot(torch.from_numpy(codes.T.copy()))
    assert pcm.dtype == np.float32 and pcm.shape == ref.shape == (10 * 1920,)
    assert np.abs(pcm - ref).max() <= 1e-4


def test_chunking_and_metrics(gen):
    params = GenerationParams(max_audio_ms=11 * 80, greedy=True, first_chunk_frames=2, chunk_frames=4)
    chunks = list(gen.stream(TEXTS[0], 0, (), params))
    assert [c.frames for c in chunks] == [2, 4, 4, 1]
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert [c.is_last for c in chunks] == [False, False, False, True]
    assert all(c.pcm.shape == (c.frames * 1920,) for c in chunks)
    last = chunks[-1].metrics
    assert last.frames_total == 11 and last.ttfa_ms == chunks[0].metrics.ttfa_ms > 0
    assert last.rtf > 0 and last.ms_per_frame > 0 and last.elapsed_s > 0


def test_sampling_with_seed_is_reproducible(gen):
    p = GenerationParams(max_audio_ms=6 * 80, temperature=0.9, topk=50, seed=1234)
    a = gen.frame_codes(TEXTS[1], frames=6, greedy=False, seed=1234)
    b = np.concatenate([c.codes for c in gen.stream(TEXTS[1], 0, (), p)])
    c = gen.frame_codes(TEXTS[1], frames=6, greedy=False, seed=99)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, gen.frame_codes(TEXTS[1], frames=6))  # sampling differs from greedy


def test_sampling_in_a_batch_equals_alone(gen):
    p = GenerationParams(max_audio_ms=5 * 80, seed=7)
    alone = gen.frame_codes(TEXTS[2], frames=5, greedy=False, seed=7)
    other = gen.add_stream(TEXTS[0], 0, (), GenerationParams(max_audio_ms=5 * 80, seed=8))
    sid = gen.add_stream(TEXTS[2], 0, (), p)
    codes, _, _ = _run_until_done(gen, [sid, other])
    np.testing.assert_array_equal(codes[sid], alone)


def test_context_segment_changes_the_prompt_and_output(gen):
    audio = torch.from_numpy(np.random.default_rng(0).standard_normal(1920 * 5).astype(np.float32) * 0.1)
    ctx = [Segment("Earlier words.", 1, audio), Segment("Text only context.", 0)]
    plain = gen.build_prompt(TEXTS[0], 0, ())
    with_ctx = gen.build_prompt(TEXTS[0], 0, ctx)
    n_ctx_text = len(gen.prompt.text_rows("Earlier words.", 1)) + len(gen.prompt.text_rows("Text only context.", 0))
    assert with_ctx.shape[0] == plain.shape[0] + n_ctx_text + 5 + 1  # 5 audio frames + the audio-eos frame
    a = gen.frame_codes(TEXTS[0], frames=4, context=ctx)
    assert a.shape == (4, 32) and not np.array_equal(a, gen.frame_codes(TEXTS[0], frames=4))


def test_eos_frame_ends_the_stream():
    """Zero heads make every logit equal, so greedy picks id 0 everywhere: the all-zero end-of-speech frame."""
    gen = tiny_generator(max_streams=1)
    with torch.no_grad():
        gen.loaded.model.lm_head.weight.zero_()
        gen.loaded.model.depth_decoder.codebooks_head.weight.zero_()
    sid = gen.add_stream("Anything.", 0, (), GenerationParams(max_audio_ms=2000, greedy=True))
    events = gen.step()
    assert [(e.stream_id, e.finished, e.reason) for e in events] == [(sid, True, "eos")]
    assert events[0].chunk.is_last and events[0].chunk.frames == 0 and gen.active() == 0


def test_batch_full_and_cancel_frees_the_slot(gen):
    ids = [gen.add_stream(t, 0, (), GenerationParams(max_audio_ms=800, greedy=True)) for t in TEXTS]
    assert gen.active() == 3
    with pytest.raises(BatchFullError):
        gen.add_stream("one more", 0)
    gen.cancel(ids[1])
    assert gen.active() == 2
    new = gen.add_stream("one more", 0, (), GenerationParams(max_audio_ms=800, greedy=True))
    events = gen.step()
    assert any(e.stream_id == ids[1] and e.finished and e.reason == "cancelled" for e in events)
    for sid in (ids[0], ids[2], new):
        gen.cancel(sid)
    gen.step()
    assert gen.active() == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"params": GenerationParams(temperature=0.0)}, "temperature"),
        ({"params": GenerationParams(topk=0)}, "topk"),
        ({"params": GenerationParams(max_audio_ms=10)}, "max_audio_ms"),
        ({"params": GenerationParams(chunk_frames=0)}, "chunk_frames"),
        ({"text": "   "}, "text is empty"),
        ({"speaker": -1}, "speaker"),
        ({"params": GenerationParams(max_audio_ms=10_000_000)}, "max_seq_len"),
    ],
)
def test_invalid_requests_raise_clear_errors(gen, kwargs, match):
    call = {"text": "fine", **kwargs}
    with pytest.raises(ValueError, match=match):
        gen.add_stream(**call)
    assert gen.active() == 0


def test_greedy_ignores_temperature_zero(gen):
    GenerationParams(temperature=0.0, greedy=True).validate()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [({"compile": "turbo"}, "compile"), ({"max_streams": 0}, "max_streams"), ({"dtype": "int8"}, "dtype")],
)
def test_invalid_settings_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_generator(**overrides)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_generator("/nonexistent/csm-model-dir", device="cpu")


def test_warmup_reports_no_cuda_graphs_on_cpu(gen):
    report = gen.warmup()
    assert report["cuda_graphs"] is False
    assert "cpu" in report["cuda_graphs_reason"] or "disabled" in report["cuda_graphs_reason"]
    assert report["warmup_s"] > 0 and gen.active() == 0


def test_cuda_graphs_requested_on_cpu_is_skipped_with_reason():
    gen = tiny_generator(max_streams=1, cuda_graphs=True)
    report = gen.warmup()
    assert report["cuda_graphs"] is False and "CUDA device" in report["cuda_graphs_reason"]
