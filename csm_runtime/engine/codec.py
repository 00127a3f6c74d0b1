"""Mimi (moshi) for CSM: encode context audio to codes, and decode frames to PCM with one streaming state per slot.

Production weights: CSM was trained on Kyutai's Mimi, `tokenizer-e351c8d8-checkpoint125.safetensors` in the
`kyutai/moshiko-pytorch-bf16` repository (moshi's `loaders.MIMI_NAME` / `DEFAULT_REPO`; Sesame's own generator loads
the same file). `mimi_weights="auto"` downloads it through the Hugging Face cache for real checkpoints; a local path
works offline. Random models get a random Mimi (seeded, codebooks filled) so tests need no network.

Streaming: only the decoder side (upsample -> decoder transformer -> SEANet decoder) is put in streaming mode, with
batch = number of slots, so the encoder stays usable one-shot for context segments. A slot that starts a new
utterance gets its rows of every streaming state reset (moshi's `reset_streaming(mask)`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from huggingface_hub import hf_hub_download

from csm_runtime.engine.download import DownloadWatch
from csm_runtime.engine.hub import HubAccessError, explain

SAMPLE_RATE = 24_000
FRAME_SAMPLES = 1920  # 80 ms per CSM frame at 12.5 Hz
NUM_CODEBOOKS = 32
CODEBOOK_SIZE = 2048  # CSM's audio vocab is 2051; ids >= 2048 (pad/eos slots) have no Mimi entry


def _moshi_loaders():
    """moshi's model loaders, imported when a Mimi is built: the rest of the engine (the frame step, the generator's
    code) imports and runs where moshi is not installed, e.g. a bare GPU box checking the frame step."""
    from moshi.models import loaders

    return loaders


def tiny_mimi_config() -> dict:
    """Mimi's real layout (same strides: 1920 samples per frame, 32 codebooks of 2048) with small widths, so the
    tests' codec costs milliseconds per frame instead of ~90 ms on this CPU."""
    cfg = copy.deepcopy(_moshi_loaders()._mimi_config)
    cfg["seanet"].update(dimension=64, n_filters=4)
    cfg["quantizer"].update(dimension=16, input_dimension=64, output_dimension=64)
    cfg["transformer"].update(
        d_model=64, num_heads=2, num_layers=1, dim_feedforward=128, input_dimension=64, output_dimensions=[64]
    )
    return cfg


def build_mimi(weights: str | None, device: torch.device, seed: int = 0, tiny: bool = False):
    """A moshi MimiModel with 32 codebooks; `weights=None` gives a seeded random one (tests, benchmarks),
    `tiny=True` a small random one (tiny-random)."""
    torch.manual_seed(seed)
    config = tiny_mimi_config() if tiny and weights is None else None
    mimi = _moshi_loaders().get_mimi(weights, config, device=device, num_codebooks=NUM_CODEBOOKS)
    if weights is None:
        # get_mimi(None) leaves the codebooks at zero, which decodes every code to the same vector.
        gen = torch.Generator().manual_seed(seed)
        for mod in mimi.modules():
            if hasattr(mod, "embedding_sum") and hasattr(mod, "cluster_usage"):
                mod.embedding_sum.copy_(torch.randn(mod.embedding_sum.shape, generator=gen).to(device))
                mod._initialized.fill_(1.0)
                mod._embedding = None
    mimi.eval()
    mimi.requires_grad_(False)
    return mimi


def resolve_mimi_weights(setting: str, model_id: str, token: str | None = None) -> str | None:
    """`auto`: random for *-random models (small for tiny-random), else the production file from the HF hub cache;
    `random` (full size, e.g. tests that load a small checkpoint from a stand-in Hub); or a path.

    `token`: the Hub token the checkpoint was loaded with. Kyutai's repo is public, but the Hub checks any token it
    is sent (an implicit HF_TOKEN too), so the same one goes here; a refusal raises HubAccessError (one line)."""
    if setting == "random" or (setting == "auto" and model_id.endswith("-random")):
        return None
    if setting == "auto":
        loaders = _moshi_loaders()
        try:
            with DownloadWatch(loaders.DEFAULT_REPO, token=token, select=lambda paths: [loaders.MIMI_NAME]):
                return hf_hub_download(loaders.DEFAULT_REPO, loaders.MIMI_NAME, token=token)
        except OSError as exc:  # the Hub's errors are OSErrors
            message = explain(exc, loaders.DEFAULT_REPO)
            if message is None:
                raise
            raise HubAccessError(f"Mimi weights: {message}") from exc
    return setting


def trim_to_frames(wav):
    """A clip cut to whole 1920-sample frames (a partial last frame dropped), so its codes are those transformers'
    Mimi (and Sesame's moshi 0.2.2) give: on a partial last frame our moshi zero-pads the waveform before its convs
    while theirs pad each conv's input, and that frame's codes differ. Works on numpy arrays and tensors ([..., N]);
    ValueError when the clip is shorter than one frame."""
    n = wav.shape[-1] - wav.shape[-1] % FRAME_SAMPLES
    if n == 0:
        raise ValueError(f"audio is shorter than one frame ({FRAME_SAMPLES} samples at {SAMPLE_RATE} Hz)")
    return wav[..., :n]


def clamp_codes(codes: torch.Tensor) -> torch.Tensor:
    """Map CSM ids Mimi cannot decode (2048..2050: pad/eos slots, emitted by random weights) into range."""
    return codes.clamp(0, CODEBOOK_SIZE - 1)


class MimiCodec:
    """Streaming decode for `slots` parallel utterances, plus one-shot encode/decode."""

    def __init__(self, mimi, slots: int):
        self.mimi = mimi
        self.slots = slots
        self.device = next(mimi.parameters()).device
        self._streaming = [mimi.upsample.convtr, mimi.decoder_transformer, mimi.decoder]
        for mod in self._streaming:
            mod.streaming_forever(slots)
        self.closed = False

    def close(self) -> None:
        """Leave streaming mode, so another MimiCodec (e.g. another batch size) can reuse the same Mimi. Idempotent."""
        if self.closed:
            return
        for mod in self._streaming:
            mod._stop_streaming()
        self.closed = True

    @torch.no_grad()
    def reset(self, slot_mask: torch.Tensor) -> None:
        """Forget the decoder history of the slots where `slot_mask` (bool, [slots]) is true."""
        mask = slot_mask.to(self.device)
        for mod in self._streaming:
            mod.reset_streaming(mask)

    @torch.no_grad()
    def decode_step(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [slots, 32, T] -> PCM [slots, T*1920] float32, continuing each slot's stream."""
        return self.mimi.decode(clamp_codes(codes.to(self.device)))[:, 0].float()

    @torch.no_grad()
    def decode_oneshot(self, codes: torch.Tensor) -> np.ndarray:
        """codes [32, T] -> PCM [T*1920] without touching the streaming state (reference for tests)."""
        mods = [m for m in self.mimi.modules() if hasattr(m, "_streaming_state")]
        states = [m._streaming_state for m in mods]
        try:
            for m in mods:
                m._streaming_state = None
            out = self.mimi.decode(clamp_codes(codes.to(self.device))[None])
        finally:
            for m, s in zip(mods, states, strict=True):
                m._streaming_state = s
        return out[0, 0].float().cpu().numpy()

    @torch.no_grad()
    def encode(self, audio: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Mono 24 kHz float audio [N] -> codes [32, ceil(N/1920)] (encoder is never in streaming mode)."""
        wav = torch.as_tensor(np.asarray(audio, dtype=np.float32)).reshape(1, 1, -1).to(self.device)
        if wav.shape[-1] == 0:
            raise ValueError("context segment audio is empty")
        pad = (-wav.shape[-1]) % FRAME_SAMPLES
        if pad:
            wav = torch.nn.functional.pad(wav, (0, pad))
        return self.mimi.encode(wav)[0]
