"""Weight-only int8 (gpt-fast style): the quantised linear tracks the float one, only the decoder layers change, a
generator runs on it, and its divergence from the unquantised weights is measured as the profile records it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from csm_runtime.engine.model import load_model
from csm_runtime.engine.quant import Int8Linear, apply_quantize, quantize_int8
from csm_runtime.tuning.divergence import divergence, reference_sample
from csm_runtime.tuning.plan import default_plan
from tests.fakes.runtime_fixtures import TEXTS, tiny_generator


def test_int8_linear_tracks_the_float_linear():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True)
    q = Int8Linear.from_linear(linear)
    assert q.weight.dtype == torch.int8 and q.scales.shape == (48,)
    x = torch.randn(5, 64)
    ref, got = linear(x), q(x)
    assert torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0) > 0.999
    assert (ref - got).abs().max() < 0.05 * ref.abs().max()


def test_quantize_replaces_only_the_decoder_layers_linears():
    model = load_model("tiny-random", device=torch.device("cpu"), dtype=torch.float32).model
    n = quantize_int8(model)
    layers = [*model.backbone_model.layers, *model.depth_decoder.model.layers]
    assert n == 7 * len(layers)  # q, k, v, o, gate, up, down
    assert all(not isinstance(m, nn.Linear) for layer in layers for m in layer.modules())
    assert isinstance(model.lm_head, nn.Linear)  # heads and embeddings keep their dtype
    assert apply_quantize(model, "off") == 0
    with pytest.raises(ValueError, match="quantize"):
        apply_quantize(model, "int4")


def test_int8_generator_runs_and_its_divergence_is_measured():
    plan = default_plan("cpu", quick=True, divergence_frames=4, prompt=TEXTS[0])
    ref_gen = tiny_generator(max_streams=1)
    ref = reference_sample(ref_gen, plan, "float32/off/no-graphs")
    q_gen = tiny_generator(max_streams=1, quantize="int8")
    assert isinstance(q_gen.loaded.model.backbone_model.layers[0].self_attn.q_proj, Int8Linear)
    got = reference_sample(q_gen, plan, "float32/off/no-graphs")
    assert got.codes.shape == (4, 32)
    d = divergence(ref, got, plan)
    assert d.frames == 4 and 0 <= d.codes_agreement <= 1 and d.logit_cosine > 0.99
    same = divergence(ref, ref, plan)
    assert same.codes_agreement == 1.0 and same.logit_cosine == pytest.approx(1.0) and same.within_bound


def test_unknown_quantize_setting_is_a_clear_error():
    with pytest.raises(ValueError, match="quantize must be one of off, int8"):
        tiny_generator(quantize="fp4")
