"""Mimi codec: streaming per slot equals one-shot, slot reset, out-of-range codes, encode shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_runtime.engine.codec import FRAME_SAMPLES, MimiCodec, build_mimi, clamp_codes, resolve_mimi_weights


@pytest.fixture(scope="module")
def codec():
    return MimiCodec(build_mimi(None, torch.device("cpu"), seed=0, tiny=True), slots=2)


def _stream(codec, codes, sizes):
    out, t = [], 0
    for n in sizes:
        out.append(codec.decode_step(codes[:, :, t : t + n]))
        t += n
    return torch.cat(out, dim=-1).numpy()


def test_streaming_decode_equals_oneshot_and_handles_codes_over_2047(codec):
    codes = torch.randint(0, 2051, (2, 32, 9), generator=torch.Generator().manual_seed(1))
    codes[0, :, 0] = 2050  # pad/eos ids that random CSM weights emit
    codec.reset(torch.tensor([True, True]))
    pcm = _stream(codec, codes, [2, 4, 1, 2])
    assert pcm.shape == (2, 9 * FRAME_SAMPLES)
    for row in range(2):
        ref = codec.decode_oneshot(codes[row])
        assert np.abs(pcm[row] - ref).max() <= 1e-4
    assert np.abs(pcm).max() > 0


def test_reset_one_slot_restarts_only_that_slot(codec):
    codes = torch.randint(0, 2048, (2, 32, 6), generator=torch.Generator().manual_seed(2))
    codec.reset(torch.tensor([True, True]))
    _stream(codec, codes, [3])
    codec.reset(torch.tensor([False, True]))
    pcm = _stream(codec, codes, [3, 3])
    assert np.abs(pcm[1, : 6 * FRAME_SAMPLES] - codec.decode_oneshot(codes[1])).max() <= 1e-4
    assert np.abs(pcm[0] - codec.decode_oneshot(codes[0])).max() > 1e-3  # slot 0 kept its history


def test_oneshot_decode_leaves_streaming_state_alone(codec):
    codes = torch.randint(0, 2048, (2, 32, 4), generator=torch.Generator().manual_seed(3))
    codec.reset(torch.tensor([True, True]))
    a = _stream(codec, codes, [2])
    codec.decode_oneshot(codes[0, :, :3])
    b = _stream(codec, codes[:, :, 2:], [2])
    full = codec.decode_oneshot(codes[0])
    assert np.abs(np.concatenate([a[0], b[0]]) - full).max() <= 1e-4


def test_encode_pads_to_whole_frames(codec):
    codes = codec.encode(np.zeros(FRAME_SAMPLES * 2 + 10, dtype=np.float32))
    assert codes.shape == (32, 3) and codes.dtype == torch.long and int(codes.max()) < 2048
    with pytest.raises(ValueError, match="empty"):
        codec.encode(np.zeros(0, dtype=np.float32))


def test_clamp_and_weight_resolution():
    assert clamp_codes(torch.tensor([0, 2047, 2048, 2050])).tolist() == [0, 2047, 2047, 2047]
    assert resolve_mimi_weights("auto", "tiny-random") is None
    assert resolve_mimi_weights("random", "sesame/csm-1b") is None
    assert resolve_mimi_weights("/models/mimi.safetensors", "sesame/csm-1b") == "/models/mimi.safetensors"


def test_close_lets_another_codec_reuse_the_same_mimi():
    mimi = build_mimi(None, torch.device("cpu"), seed=0, tiny=True)
    first = MimiCodec(mimi, slots=1)
    first.close()
    second = MimiCodec(mimi, slots=3)
    assert second.decode_step(torch.zeros(3, 32, 1, dtype=torch.long)).shape == (3, FRAME_SAMPLES)
