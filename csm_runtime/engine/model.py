"""Build the CSM model and its text tokenizer: the real checkpoint, or random ones with the same code path.

Three sources, one result (`LoadedModel`):
- `tiny-random`: a 2-layer CSM (hidden 128, 32 codebooks) with an in-memory byte-level tokenizer, for tests.
- `csm-1b-random`: `CsmConfig()` defaults (the real CSM-1B shape), uninitialised + fast uniform fill, for benchmarks.
- anything else: a Hugging Face id or local path loaded with `from_pretrained`, tokenizer from the same checkpoint,
  with the Hub token when one is given (hub.py: a gated checkpoint such as sesame/csm-1b needs it). A refusal by the
  Hub becomes one line saying what to do; the download's progress is watched from the cache (download.py).

After loading, all three are a `CsmForConditionalGeneration` in eval mode with its HF codec dropped (we decode with
moshi's Mimi, see codec.py), so the generator never branches on where the weights came from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, CsmConfig, CsmForConditionalGeneration, PreTrainedTokenizerFast
from transformers.modeling_utils import no_init_weights

from csm_runtime.engine.download import DownloadWatch
from csm_runtime.engine.hub import explain

# Special tokens as the CSM chat template writes them (processing_csm.py): one segment is
# `<|begin_of_text|>[speaker]text<|end_of_text|>` then, for context, `<|AUDIO|>`*frames `<|audio_eos|>`.
BOS, EOS, AUDIO, AUDIO_EOS = "<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>"


class ModelLoadError(ValueError):
    """The model id cannot be built or loaded; the message says which and why."""


@dataclass
class LoadedModel:
    model: CsmForConditionalGeneration
    tokenizer: PreTrainedTokenizerFast
    model_id: str
    load_s: float

    @property
    def config(self) -> CsmConfig:
        return self.model.config


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} requested but CUDA is not available")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in table:
        raise ModelLoadError(f"dtype {name!r}: expected auto, float32, bfloat16 or float16")
    return table[name]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer built in memory (256 byte tokens + the 4 CSM specials): no network, any text."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for tok in (BOS, EOS, AUDIO, AUDIO_EOS):
        vocab[tok] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=AUDIO)
    tok.add_special_tokens({"additional_special_tokens": [AUDIO, AUDIO_EOS]})
    return tok


def tiny_config(tokenizer: PreTrainedTokenizerFast) -> CsmConfig:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (BOS, AUDIO, AUDIO_EOS)}
    depth = {
        "num_codebooks": 32,
        "backbone_hidden_size": 128,
        "vocab_size": 2051,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 33,
    }
    # The HF model always builds its own Mimi codec; make it tiny since we drop it right after.
    codec = {
        "model_type": "mimi",
        "hidden_size": 32,
        "num_filters": 4,
        "num_hidden_layers": 1,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "codebook_dim": 16,
        "vector_quantization_hidden_dimension": 16,
        "upsample_groups": 32,
        "codebook_size": 2048,
    }
    return CsmConfig(
        num_codebooks=32,
        vocab_size=2051,
        text_vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=ids[BOS],
        pad_token_id=ids[AUDIO],
        audio_token_id=ids[AUDIO],
        audio_eos_token_id=ids[AUDIO_EOS],
        depth_decoder_config=depth,
        codec_config=codec,
    )


def _drop_codec(model: CsmForConditionalGeneration) -> None:
    # We decode with moshi's streaming Mimi (codec.py); the HF copy would only cost memory (79M params real size).
    model.codec_model = None


def _build_tiny(seed: int, dtype: torch.dtype) -> tuple[CsmForConditionalGeneration, PreTrainedTokenizerFast]:
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = CsmForConditionalGeneration(tiny_config(tok))
    return model.to(dtype), tok


def _build_1b_random(
    seed: int, dtype: torch.dtype, device: torch.device
) -> tuple[CsmForConditionalGeneration, PreTrainedTokenizerFast]:
    """Real shape, random weights: allocate uninitialised in the target dtype on `device`, then one uniform_ per
    tensor there (~10 s on a CPU, well under one on a GPU; the values depend on the device's generator)."""
    config = CsmConfig()
    with no_init_weights(), torch.device(device):
        model = CsmForConditionalGeneration._from_config(config, torch_dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.fill_(1.0)
            else:
                p.uniform_(-0.035, 0.035, generator=gen)  # std ~0.02, like the HF initializer_range
    # The text tokenizer of the real checkpoint cannot be downloaded here; ids are only fed to random weights, so
    # the byte-level tokenizer is remapped onto the real special ids.
    tok = tiny_tokenizer()
    return model, tok


def _load_pretrained(model_id: str, revision: str | None, dtype: torch.dtype, token: str | None):
    """`token=None` leaves the Hub's own lookup (HF_TOKEN, the `hf auth login` file) in charge."""
    try:
        with DownloadWatch(model_id, revision=revision, token=token):
            tok = AutoTokenizer.from_pretrained(model_id, revision=revision, token=token)
            model = CsmForConditionalGeneration.from_pretrained(model_id, revision=revision, dtype=dtype, token=token)
    except (OSError, ValueError) as exc:  # the Hub's errors are OSErrors, bare or wrapped by transformers
        message = explain(exc, model_id, revision)
        if message is not None:
            raise ModelLoadError(message) from exc
        raise ModelLoadError(f"cannot load model {model_id!r}: {str(exc).splitlines()[0]}") from exc
    return model, tok


def load_model(
    model_id: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    revision: str | None = None,
    seed: int = 0,
    token: str | None = None,
) -> LoadedModel:
    """Build or load `model_id` onto `device` in `dtype`, eval mode, HF codec dropped. `token`: the Hub token."""
    t0 = time.perf_counter()
    if not model_id:
        raise ModelLoadError("model id is empty: use tiny-random, csm-1b-random, a Hugging Face id or a path")
    if model_id == "tiny-random":
        model, tok = _build_tiny(seed, dtype)
    elif model_id == "csm-1b-random":
        model, tok = _build_1b_random(seed, dtype, device)
    else:
        model, tok = _load_pretrained(model_id, revision, dtype, token)
    _drop_codec(model)
    model = model.to(device).eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tok, model_id=model_id, load_s=time.perf_counter() - t0)


def special_ids(loaded: LoadedModel) -> dict[str, int]:
    """Token ids of the segment markers; for the random 1B model the config's ids stand in for the missing vocab."""
    cfg = loaded.config
    tok = loaded.tokenizer
    if loaded.model_id == "csm-1b-random":
        return {
            "bos": cfg.bos_token_id,
            "eos": 128001,
            "audio": cfg.audio_token_id,
            "audio_eos": cfg.audio_eos_token_id,
        }
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in (("bos", BOS), ("eos", EOS))}
    ids.update(audio=cfg.audio_token_id, audio_eos=cfg.audio_eos_token_id)
    return ids
