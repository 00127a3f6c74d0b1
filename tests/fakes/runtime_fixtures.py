"""Shared helpers for the runtime tests: tiny generators and the transformers reference decode."""

from __future__ import annotations

import numpy as np
import torch

from csm_runtime.engine.generator import StreamingGenerator
from csm_runtime.engine.loader import load_generator

TEXTS = ("Hello there, how are you?", "The quick brown fox.", "Streaming speech, one frame at a time!")


def tiny_generator(**overrides) -> StreamingGenerator:
    settings = {"max_streams": 3, "device": "cpu", "dtype": "float32", **overrides}
    return load_generator("tiny-random", **settings)


def context_equals_transformers(gen: StreamingGenerator, frames: int, clip: np.ndarray) -> dict:
    """Greedy codes with a stored-codes voice (`clip` encoded once, as an upload is), prefilled cold and then reused
    from the prefix cache, against transformers' `generate` fed the same rows and the same audio through its own
    MimiModel holding our Mimi's weights. Spreads the Mimi's codebooks (distinct codes per frame, so the comparison
    can fail). Returns the two verdicts and the context's size."""
    from csm_runtime.engine.codec import _moshi_loaders, tiny_mimi_config
    from csm_runtime.engine.types import Segment
    from tests.fakes.hf_mimi import hf_mimi_from_moshi, spread_codebooks

    spread_codebooks(gen.codec.mimi)
    model = gen.loaded.model
    cfg = tiny_mimi_config() if gen.model_id == "tiny-random" else _moshi_loaders()._mimi_config
    model.codec_model = hf_mimi_from_moshi(gen.codec.mimi, cfg)
    voice = Segment("Short reference.", 1, codes=gen.codec.encode(clip).cpu().numpy())
    gen.prefix_cache.clear()
    cold = gen.frame_codes("Say it.", 0, [voice], frames=frames)
    warm = gen.frame_codes("Say it.", 0, [voice], frames=frames)
    rows = gen.prompt.rows("Say it.", 0, [voice])
    ids = torch.tensor([rows.tokens])
    try:  # eos stays on, as in the reference test: both stop at the same frame if one comes
        with torch.no_grad():
            theirs = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                input_values=torch.from_numpy(clip).view(1, 1, -1),
                input_values_cutoffs=torch.tensor([[clip.shape[0]]]),
                max_new_tokens=frames,
                do_sample=False,
                depth_decoder_do_sample=False,
            )[0].numpy()
    finally:
        model.codec_model = None
    return {
        "frames": frames,
        "context_rows": len(rows.tokens),
        "prefix_hits": gen.prefix_stats()["hits"],
        "cold_equals_transformers": bool(np.array_equal(cold, theirs)),
        "warm_equals_transformers": bool(np.array_equal(warm, theirs)),
    }


def hf_greedy_codes(gen: StreamingGenerator, text: str, speaker: int, frames: int) -> np.ndarray:
    """transformers' own CsmForConditionalGeneration.generate, greedy, fixed length (eos disabled as in NOTES)."""
    model = gen.loaded.model
    ids = torch.tensor([gen.prompt.text_rows(text, speaker)], device=gen.device)
    saved = model.config.codebook_eos_token_id
    model.config.codebook_eos_token_id = -1
    try:
        out = model.generate(input_ids=ids, max_new_tokens=frames, do_sample=False, depth_decoder_do_sample=False)
    finally:
        model.config.codebook_eos_token_id = saved
    return out[0].cpu().numpy()
