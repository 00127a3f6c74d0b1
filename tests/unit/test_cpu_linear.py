"""oneDNN packed linears on a CPU: the same outputs as nn.Linear for any number of rows, chosen only where they pay
(float32, eager, batching), and a batched generator on them still says exactly what transformers' generate says on the plain weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from csm_runtime.engine.cpu_linear import PackedLinear, onednn_available, pack_linears, wants_packing
from csm_runtime.engine.model import load_model
from tests.fakes.runtime_fixtures import TEXTS, hf_greedy_codes, tiny_generator

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN packed linear")
CPU = torch.device("cpu")


@pytest.mark.parametrize("rows", [1, 3, 8, 17])
def test_a_packed_linear_equals_the_linear_for_any_row_count(rows):
    torch.manual_seed(0)
    linear = nn.Linear(256, 384, bias=True)
    packed = PackedLinear(linear, batch_hint=8)
    x = torch.randn(2, rows, 256)
    torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)


def test_packing_is_chosen_only_for_batched_eager_float32_on_a_cpu():
    f32, bf16 = torch.float32, torch.bfloat16
    assert wants_packing("auto", CPU, f32, 4, "off", "off")
    assert not wants_packing("auto", CPU, f32, 1, "off", "off")  # one row: MKL's GEMV is faster
    assert wants_packing("onednn", CPU, f32, 1, "off", "off")
    assert not wants_packing("auto", CPU, bf16, 4, "off", "off")
    assert not wants_packing("auto", CPU, f32, 4, "int8", "off")
    assert not wants_packing("auto", CPU, f32, 4, "off", "default")
    assert not wants_packing("auto", torch.device("cuda"), f32, 4, "off", "off")
    assert not wants_packing("mkl", CPU, f32, 4, "off", "off")
    with pytest.raises(ValueError, match="eager only"):
        wants_packing("onednn", CPU, f32, 4, "off", "default")
    with pytest.raises(ValueError, match="cpu_linear must be one of"):
        wants_packing("fast", CPU, f32, 4, "off", "off")


def test_pack_linears_replaces_the_frame_steps_linears_only():
    model = load_model("tiny-random", device=CPU, dtype=torch.float32).model
    n = pack_linears(model)
    layers = len(model.backbone_model.layers) + len(model.depth_decoder.model.layers)
    assert n == layers * 7 + 2  # q, k, v, o, gate, up, down per layer; the decoder's input projection; lm_head
    assert isinstance(model.lm_head, PackedLinear)
    assert isinstance(model.depth_decoder.model.inputs_embeds_projector, PackedLinear)
    assert not any(isinstance(m, nn.Linear) for m in model.backbone_model.layers.modules())


def test_auto_packs_only_layers_big_enough_to_pay():
    small = tiny_generator(max_streams=4)  # tiny-random's layers are 128 wide: MKL batches them faster
    assert isinstance(small.loaded.model.lm_head, nn.Linear)
    model = load_model("tiny-random", device=CPU, dtype=torch.float32).model
    assert pack_linears(model, min_elements=2051 * 128) == 1  # lm_head alone: the only one of 2051 x 128


def test_a_batched_generator_on_packed_linears_says_what_the_plain_weights_say():
    plain = tiny_generator(max_streams=4, cpu_linear="mkl")
    reference = hf_greedy_codes(plain, TEXTS[2], 1, 16)  # transformers' generate on the unpacked model
    gen = tiny_generator(max_streams=4, cpu_linear="onednn")
    assert isinstance(gen.loaded.model.lm_head, PackedLinear)
    np.testing.assert_array_equal(gen.frame_codes(TEXTS[2], speaker=1, frames=16), reference)
