"""Building generators from settings: `load_generator` for one, `GeneratorFactory` for many that share the weights.

The factory loads the CSM weights once per (model, revision, seed, dtype, quantize, packed linears) and builds a Mimi module per
weights setting, then a fresh StreamingGenerator (its own rows, caches and frame step) for each settings object it is
given. The autotune sweep builds dozens of generators this way (csm-1b-random alone takes ~13 s to build), several
open at once when it interleaves settings: each open generator holds a Mimi of its own (Mimi's streaming state lives
in the module), and a generator's `close()` hands its Mimi back to the next build.
"""

from __future__ import annotations

import gc

import torch

from csm_runtime.engine.codec import MimiCodec, build_mimi, resolve_mimi_weights
from csm_runtime.engine.cpu_linear import AUTO_MIN_ELEMENTS, pack_linears, wants_packing
from csm_runtime.engine.generator import StreamingGenerator
from csm_runtime.engine.hub import read_hub_token
from csm_runtime.engine.model import LoadedModel, load_model, resolve_device, resolve_dtype
from csm_runtime.engine.quant import QUANTIZE_MODES, apply_quantize
from csm_runtime.settings import RuntimeSettings


class GeneratorFactory:
    """Generators on `base.device` (torch threads from `base.cpu_threads`), sharing loaded weights between builds."""

    def __init__(self, base: RuntimeSettings) -> None:
        if base.cpu_threads > 0:
            torch.set_num_threads(base.cpu_threads)
        self.device = resolve_device(base.device)
        self._token = read_hub_token(base.hf_token_file)  # read once; only ever passed to the Hub's own calls
        self._model_key: tuple | None = None
        self._loaded: LoadedModel | None = None
        self._mimi_key: tuple | None = None
        self._mimis: list[tuple[object, MimiCodec | None]] = []  # (Mimi module, the codec using it or None)

    def build(self, settings: RuntimeSettings) -> StreamingGenerator:
        """A new generator for `settings` (its device and Hub token are the factory's). Raises ValueError,
        ModelLoadError or HubAccessError (a ValueError)."""
        if settings.max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {settings.max_streams}")
        dtype = resolve_dtype(settings.dtype, self.device)
        if settings.quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {settings.quantize!r}")
        packed = wants_packing(
            settings.cpu_linear, self.device, dtype, settings.max_streams, settings.quantize, settings.compile
        )
        model_key = (settings.model, settings.revision, settings.init_seed, dtype, settings.quantize, packed)
        if self._loaded is None or self._model_key != model_key:
            self.release()  # one model in memory at a time
            self._loaded = load_model(
                settings.model,
                device=self.device,
                dtype=dtype,
                revision=settings.revision,
                seed=settings.init_seed,
                token=self._token,
            )
            apply_quantize(self._loaded.model, settings.quantize)
            if packed:
                least = 0 if settings.cpu_linear == "onednn" else AUTO_MIN_ELEMENTS
                pack_linears(self._loaded.model, batch_hint=max(settings.max_streams, 2), min_elements=least)
            self._model_key = model_key
        codec = MimiCodec(self._free_mimi(settings), settings.max_streams)
        self._mimis = [(m, codec if m is codec.mimi else c) for m, c in self._mimis]
        return StreamingGenerator(self._loaded, codec, settings, self.device, dtype)

    def _free_mimi(self, settings: RuntimeSettings):
        """A Mimi for `settings` that no open generator is using (built when every one of them is busy)."""
        mimi_key = (settings.mimi_weights, settings.model, settings.init_seed)
        if self._mimi_key != mimi_key:
            self._mimis, self._mimi_key = [], mimi_key
        for mimi, codec in self._mimis:
            if codec is None or codec.closed:
                return mimi
        weights = resolve_mimi_weights(settings.mimi_weights, settings.model, token=self._token)
        tiny = settings.model == "tiny-random" and settings.mimi_weights == "auto"
        mimi = build_mimi(weights, self.device, seed=settings.init_seed, tiny=tiny)
        self._mimis.append((mimi, None))
        return mimi

    def release(self) -> None:
        """Drop the loaded model, so the next one does not share memory with it."""
        self._loaded = self._model_key = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def load_generator(
    model: str | None = None, *, settings: RuntimeSettings | None = None, **overrides
) -> StreamingGenerator:
    """Build a generator. `model` (or settings.model when only settings are given; `tiny-random` when neither) and
    keyword overrides of any RuntimeSettings field win over `settings`."""
    settings = settings or RuntimeSettings(model="tiny-random")
    if model is not None:
        overrides["model"] = model
    settings = settings.replace(**overrides)
    return GeneratorFactory(settings).build(settings)
