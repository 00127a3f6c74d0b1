"""The checkpoints tests serve from the stand-in: a random tiny CSM (the runtime's own `tiny-random` config, so the
two cannot drift apart) and random weights in the layout of Kyutai's Mimi file."""

from __future__ import annotations

from pathlib import Path

MIMI_REPO = "kyutai/moshiko-pytorch-bf16"  # moshi.models.loaders.DEFAULT_REPO
MIMI_FILENAME = "tokenizer-e351c8d8-checkpoint125.safetensors"  # moshi.models.loaders.MIMI_NAME


def build_csm_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A random tiny CSM in transformers' format (config, generation config, model.safetensors, tokenizer files)."""
    import torch  # torch and transformers load only for the tests that build a checkpoint
    from transformers import CsmForConditionalGeneration

    from csm_runtime.engine.model import tiny_config, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = CsmForConditionalGeneration(tiny_config(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_mimi_repo(folder: Path, seed: int = 0) -> Path:
    """Random weights in the layout of Kyutai's Mimi file (moshi's full-size config, 318 tensors, ~385 MB float32),
    at the name moshi downloads, so `moshi.models.loaders.get_mimi(path)` loads it strictly."""
    import torch
    from moshi.models import loaders
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    mimi = loaders.get_mimi(None, device="cpu", num_codebooks=32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in mimi.state_dict().items()}, folder / MIMI_FILENAME)
    return folder
