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
