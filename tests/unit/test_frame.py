"""The frame step's KV cache: each write lands where it says, returns what the layer attends over, and reset() zeroes
the same storage (a captured CUDA graph keeps pointing at it)."""

from __future__ import annotations

import torch

from csm_runtime.engine.frame import FrameStep, KVCache
from tests.fakes.runtime_fixtures import tiny_generator


def _cache(slots: int = 3, length: int = 6) -> KVCache:
    return KVCache(2, slots, 2, length, 4, device=torch.device("cpu"), dtype=torch.float32)


def _kv(b: int, t: int, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((b, 2, t, 4), fill), torch.full((b, 2, t, 4), -fill)


def test_write_prompt_fills_one_slot_from_position_zero():
    cache = _cache()
    k, v = _kv(1, 4, 1.0)
    kc, vc = cache.write_prompt(1, k, v, slot=2)
    assert kc.shape == (1, 2, 4, 4) and torch.equal(kc, k) and torch.equal(vc, v)
    assert torch.equal(cache.k[1][2, :, :4], k[0]) and cache.k[1][2, :, 4:].abs().sum() == 0
    assert cache.k[1][:2].abs().sum() == 0 and cache.k[0].abs().sum() == 0  # other slots, other layer untouched


def test_write_rows_puts_each_row_at_its_own_position():
    cache = _cache()
    k = torch.arange(3.0)[:, None, None, None].expand(3, 2, 1, 4) + 1
    keys, vals = cache.write_rows(0, k, -k, pos=torch.tensor([0, 5, 2]))
    assert keys is cache.k[0] and vals is cache.v[0]
    assert [int(keys[row, 0, :, 0].nonzero()) for row in range(3)] == [0, 5, 2]
    assert keys[1, 0, 5, 0] == 2 and vals[2, 0, 2, 0] == -3


def test_write_first_and_write_at_cover_every_row():
    cache = _cache(length=4)
    cache.write_first(0, *_kv(3, 2, 1.0))
    cache.write_at(0, *_kv(3, 1, 2.0), idx=torch.tensor([3]))
    assert cache.k[0][:, :, :2].eq(1).all() and cache.k[0][:, :, 2].eq(0).all() and cache.k[0][:, :, 3].eq(2).all()


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
