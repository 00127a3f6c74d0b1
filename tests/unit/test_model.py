"""Model builders: tiny-random offline with its tokenizer, csm-1b-random shape (slow), and the real-shape greedy
equality against transformers, text alone and with a stored-codes voice reused from the prefix cache (slow: ~7 GB
float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_runtime.engine.model import ModelLoadError, load_model, resolve_dtype, special_ids, tiny_tokenizer
from tests.fakes.runtime_fixtures import context_equals_transformers, hf_greedy_codes

CPU = torch.device("cpu")


def test_tiny_tokenizer_round_trips_any_text_offline():
    tok = tiny_tokenizer()
    text = "[1]Héllo — wörld 🙂"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids("<|begin_of_text|>") == 256


def test_tiny_random_is_a_csm_with_32_codebooks_and_no_hf_codec():
    loaded = load_model("tiny-random", device=CPU, dtype=torch.float32)
    cfg = loaded.config
    assert cfg.num_codebooks == 32 and cfg.vocab_size == 2051 and cfg.hidden_size == 128
    assert loaded.model.codec_model is None and not loaded.model.training
    ids = special_ids(loaded)
    assert ids["audio"] == cfg.audio_token_id and ids["bos"] == cfg.bos_token_id
    # seeded: same weights twice
    again = load_model("tiny-random", device=CPU, dtype=torch.float32)
    assert torch.equal(loaded.model.lm_head.weight, again.model.lm_head.weight)


def test_dtype_and_model_errors():
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    with pytest.raises(ModelLoadError, match="dtype"):
        resolve_dtype("fp8", CPU)
    with pytest.raises(ModelLoadError, match="empty"):
        load_model("", device=CPU, dtype=torch.float32)


@pytest.mark.slow
def test_csm_1b_random_has_the_real_shape():
    loaded = load_model("csm-1b-random", device=CPU, dtype=torch.bfloat16)
    n = sum(p.numel() for p in loaded.model.parameters())
    assert 1.5e9 < n < 1.7e9
    assert loaded.model.lm_head.weight.dtype == torch.bfloat16
    assert loaded.config.num_hidden_layers == 16 and loaded.config.depth_decoder_config.num_hidden_layers == 4


@pytest.mark.slow
def test_csm_1b_random_greedy_equals_transformers_float32():
    from csm_runtime.engine.loader import load_generator

    gen = load_generator("csm-1b-random", device="cpu", dtype="float32", max_streams=1, max_seq_len=256)
    ours = gen.frame_codes("Real shape check.", speaker=0, frames=3)
    np.testing.assert_array_equal(ours, hf_greedy_codes(gen, "Real shape check.", 0, 3))
    # With context: a 1 s voice clip as stored codes, its prefix prefilled cold then reused, against transformers
    # fed the same conversation (its audio encoded by transformers' own Mimi with our Mimi's weights).
    clip = (np.random.default_rng(7).standard_normal(12 * 1920) * 0.1).astype(np.float32)
    verdict = context_equals_transformers(gen, 3, clip)
    assert verdict["prefix_hits"] >= 1, verdict  # the warm request really reused the voice's prefix
    assert verdict["cold_equals_transformers"] and verdict["warm_equals_transformers"], verdict
