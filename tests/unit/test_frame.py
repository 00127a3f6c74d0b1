"""The frame step's KV cache: each write lands where it says, returns what the layer attends over (rows :B, positions
:L), rows move for compaction, and reset() zeroes the same storage (a captured CUDA graph keeps pointing at it).
Grouped-KV attention without repeating the cache equals transformers' repeat_kv maths; buckets and the frame noise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from csm_runtime.engine.frame import FrameStep, KVCache, _attend, bucket_for, buckets, frame_noise
from tests.fakes.runtime_fixtures import tiny_generator


def _cache(slots: int = 3, length: int = 6) -> KVCache:
    return KVCache(2, slots, 2, length, 4, device=torch.device("cpu"), dtype=torch.float32)


def _kv(b: int, t: int, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((b, 2, t, 4), fill), torch.full((b, 2, t, 4), -fill)


def test_write_prompt_fills_one_slot_from_position_zero():
    cache = _cache()
    k, v = _kv(1, 4, 1.0)
    kc, vc = cache.write_prompt(1, k, v, row=2)
    assert kc.shape == (1, 2, 4, 4) and torch.equal(kc, k) and torch.equal(vc, v)
    assert torch.equal(cache.k[1][2, :, :4], k[0]) and cache.k[1][2, :, 4:].abs().sum() == 0
    assert cache.k[1][:2].abs().sum() == 0 and cache.k[0].abs().sum() == 0  # other slots, other layer untouched


def test_write_prompt_at_an_offset_keeps_the_prefix_and_returns_it_with_the_new_rows():
    cache = _cache()
    cache.write_prompt(0, *_kv(1, 2, 1.0), row=1)
    kc, vc = cache.write_prompt(0, *_kv(1, 3, 2.0), row=1, start=2)
    assert kc.shape == vc.shape == (1, 2, 5, 4)
    assert kc[0, :, :2].eq(1).all() and kc[0, :, 2:].eq(2).all() and vc[0, :, 2:].eq(-2).all()
    assert cache.k[0][0].abs().sum() == 0 and cache.k[0][2].abs().sum() == 0


def test_read_prefix_and_load_prefix_copy_a_rows_positions_in_every_layer():
    cache = _cache()
    for layer in range(2):
        cache.write_prompt(layer, *_kv(1, 4, layer + 1.0), row=0)
    keys, values = cache.read_prefix(0, 3)
    assert [k.shape for k in keys] == [(2, 3, 4)] * 2
    cache.reset()  # the copies are their own storage
    assert keys[1].eq(2).all() and values[0].eq(-1).all()
    cache.load_prefix(2, keys, values)
    assert cache.k[1][2, :, :3].eq(2).all() and cache.v[0][2, :, :3].eq(-1).all()
    assert cache.k[1][2, :, 3:].abs().sum() == 0 and cache.k[1][:2].abs().sum() == 0


def test_prefill_in_chunks_at_an_offset_equals_one_pass():
    """Rows prefilled at an offset see the cached rows before them with their own rotary positions: the same hidden
    state and cache as the whole prompt at once (to rounding: the matmuls' shapes differ)."""
    gen = tiny_generator(max_streams=2)
    embeds = gen.build_prompt("Chunked prompt, in three pieces.", 0, ())
    t = embeds.shape[0]
    whole = gen.frame.prefill(0, embeds)
    gen.frame.prefill(1, embeds[:5])
    gen.frame.prefill(1, embeds[5:12], start=5)
    chunked = gen.frame.prefill(1, embeds[12:], start=12)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    cache = gen.frame.backbone_cache
    for layer in range(2):
        torch.testing.assert_close(cache.k[layer][1, :, :t], cache.k[layer][0, :, :t], rtol=1e-5, atol=1e-5)
    wrong = gen.frame.prefill(1, embeds[12:], start=13)  # other rotary positions and another attended prefix
    assert not torch.allclose(wrong, whole, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="does not fit"):
        gen.frame.prefill(1, embeds, start=gen.frame.max_seq - 1)


def test_write_rows_puts_each_row_at_its_own_position():
    cache = _cache()
    k = torch.arange(3.0)[:, None, None, None].expand(3, 2, 1, 4) + 1
    keys, vals = cache.write_rows(0, k, -k, pos=torch.tensor([0, 5, 2]), length=6)
    assert keys.data_ptr() == cache.k[0].data_ptr() and keys.shape == vals.shape == (3, 2, 6, 4)
    assert [int(keys[row, 0, :, 0].nonzero()) for row in range(3)] == [0, 5, 2]
    assert keys[1, 0, 5, 0] == 2 and vals[2, 0, 2, 0] == -3


def test_write_rows_for_a_smaller_batch_and_length_touches_only_those():
    cache = _cache()
    keys, _ = cache.write_rows(0, *_kv(2, 1, 4.0), pos=torch.tensor([1, 3]), length=4)
    assert keys.shape == (2, 2, 4, 4)  # rows :2, positions :4
    assert cache.k[0][0, :, 1].eq(4).all() and cache.k[0][1, :, 3].eq(4).all() and cache.k[0][2].abs().sum() == 0


def test_write_first_and_write_at_cover_the_batch_rows():
    cache = _cache(length=4)
    cache.write_first(0, *_kv(3, 2, 1.0))
    cache.write_at(0, *_kv(3, 1, 2.0), idx=torch.tensor([3]))
    assert cache.k[0][:, :, :2].eq(1).all() and cache.k[0][:, :, 2].eq(0).all() and cache.k[0][:, :, 3].eq(2).all()
    keys, _ = cache.write_at(0, *_kv(2, 1, 5.0), idx=torch.tensor([2]))
    assert keys.shape[0] == 2 and cache.k[0][:2, :, 2].eq(5).all() and cache.k[0][2, :, 2].eq(0).all()


def test_move_row_copies_the_used_positions_of_every_layer():
    cache = _cache()
    cache.write_first(1, *_kv(3, 6, 0.0))
    cache.write_rows(1, *_kv(3, 1, 9.0), pos=torch.tensor([0, 0, 4]), length=6)
    cache.move_row(2, 0, length=5)
    assert torch.equal(cache.k[1][0, :, :5], cache.k[1][2, :, :5]) and cache.k[1][0, :, 4].eq(9).all()


def test_reset_zeroes_in_place():
    cache = _cache()
    cache.write_first(1, *_kv(3, 6, 7.0))
    ptr = cache.k[1].data_ptr()
    cache.reset()
    assert cache.k[1].data_ptr() == ptr and all(t.abs().sum() == 0 for t in (*cache.k, *cache.v))


def test_generator_steps_through_one_frame_step_over_its_caches():
    gen = tiny_generator(max_streams=2)
    step = gen._frame_step
    assert isinstance(step, FrameStep) and step.compile_mode == "off" and step.frame is gen.frame
    assert gen.frame.backbone_cache.k[0].shape == (2, 2, gen.settings.max_seq_len, 32)
    assert gen.frame.depth_cache.k[0].shape == (2, 2, 32, 16)


def _repeat_kv_attention(q, k, v, mask, scale):
    """transformers' maths: every query head gets its KV head repeated (repeat_kv), then plain SDPA."""
    rep = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), attn_mask=mask, scale=scale
    )


def test_grouped_attention_without_repeating_the_cache_equals_repeat_kv():
    gen = torch.Generator().manual_seed(0)
    for t, mask in ((1, torch.rand(3, 1, 1, 7, generator=gen) > 0.3), (4, torch.ones(4, 7, dtype=torch.bool).tril(3))):
        mask[..., 0] = True  # every row sees something
        q = torch.randn(3, 8, t, 16, generator=gen)
        k, v = torch.randn(3, 2, 7, 16, generator=gen), torch.randn(3, 2, 7, 16, generator=gen)
        out = _attend(q, k, v, mask, 0.25)
        assert out.shape == q.shape
        torch.testing.assert_close(out, _repeat_kv_attention(q, k, v, mask, 0.25), rtol=1e-5, atol=1e-6)


def test_buckets_are_powers_of_two_up_to_the_limit():
    assert buckets(64) == (1, 2, 4, 8, 16, 32, 64) and buckets(6) == (1, 2, 4, 6) and buckets(1) == (1,)
    assert buckets(2048, 128) == (128, 256, 512, 1024, 2048) and buckets(100, 128) == (100,)
    assert [bucket_for(n, buckets(6)) for n in (1, 2, 3, 5, 6, 9)] == [1, 2, 4, 6, 6, 6]


def test_frame_noise_is_uniform_keyed_by_seed_and_frame_and_independent_of_the_batch():
    index = torch.arange(32 * 2051)
    seeds, counters = torch.tensor([7, 7, 8, 2**61 + 7]), torch.tensor([0, 1, 0, 0])
    u = frame_noise(seeds, counters, index)
    assert u.shape == (4, 32 * 2051) and u.dtype == torch.float32 and u.min() > 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    assert len({tuple(r[:64].tolist()) for r in u}) == 4  # seed, frame and the seed's high bits all change it
    assert torch.equal(frame_noise(seeds[2:3], counters[2:3], index)[0], u[2])  # alone == in a batch
    hist = torch.histc(u[0], bins=16, min=0, max=1)
    assert (hist / hist.mean() - 1).abs().max() < 0.05
