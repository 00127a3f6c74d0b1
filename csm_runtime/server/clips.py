"""Reference clips sent by clients (voice uploads, conversation turns, per-request context audio): decoded from
memory, bounded, made mono 24 kHz in whole Mimi frames, then encoded with Mimi once on the engine thread.

Decoding is libsndfile through soundfile on an in-memory buffer: no temporary files, no shell-outs. It is bounded
before a sample is read: the header's rate, channels and length are checked first, and the read itself never asks
for more frames than `max_s` allows (a header that lies about its length cannot make it read more). Trimming to whole
1920-sample frames makes the stored codes equal what Mimi gives for the same audio elsewhere (a partial last frame
would be zero-padded, and its codes differ).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Any

import numpy as np

SAMPLE_RATE = 24_000  # Mimi's rate (csm_runtime/engine/codec.py; not imported here: that module imports torch)
FRAME_SAMPLES = 1920
MIN_RATE, MAX_RATE = 4_000, 192_000
MAX_CHANNELS = 16
BLOCK_FRAMES = 65_536


class ClipError(ValueError):
    """A clip that cannot be used: `status` (400/413), `code` (invalid_audio, invalid_length, file_too_large) and a
    one-line message; `param` names the request field when the caller knows it."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


def _trim(wav: np.ndarray) -> np.ndarray:
    return wav[: len(wav) // FRAME_SAMPLES * FRAME_SAMPLES]


def _length_error(seconds: float, min_s: float, max_s: float) -> ClipError:
    return ClipError(
        400, "invalid_length", f"clip is {seconds:.2f} s long; it must be between {min_s:g} and {max_s:g} s"
    )


def _read_mono(f, limit: int) -> np.ndarray:
    """At most `limit` frames, mixed to mono block by block: memory is the mono clip plus one block, whatever the
    channel count (a small FLAC of 16 silent channels must not become a large array)."""
    out = np.empty(limit, dtype=np.float32)
    n = 0
    while n < limit:
        block = f.read(frames=min(BLOCK_FRAMES, limit - n), dtype="float32", always_2d=True)
        if block.shape[0] == 0:
            break
        out[n : n + block.shape[0]] = block.mean(axis=1, dtype=np.float32)
        n += block.shape[0]
    return out[:n]


def decode_clip(data: bytes, *, min_s: float = 1.0, max_s: float = 30.0) -> np.ndarray:
    """Audio file bytes (any format libsndfile reads) -> mono float32 at 24 kHz, a whole number of 1920-sample
    frames. Raises ClipError 400 `invalid_audio` (not audio, undecodable, odd rate/channels, non-finite samples)
    or `invalid_length` (shorter than `min_s` or longer than `max_s`, measured on the decoded clip)."""
    import soundfile as sf

    if not data:
        raise ClipError(400, "invalid_audio", "the audio file is empty")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels, declared = f.samplerate, f.channels, f.frames
            if not MIN_RATE <= rate <= MAX_RATE:
                raise ClipError(400, "invalid_audio", f"unsupported sample rate {rate} Hz ({MIN_RATE}..{MAX_RATE})")
            if not 1 <= channels <= MAX_CHANNELS:
                raise ClipError(400, "invalid_audio", f"unsupported channel count {channels} (1..{MAX_CHANNELS})")
            limit = math.floor(max_s * rate) + 1  # one frame past the limit is enough to know it is too long
            if 0 < declared < 2**62 and declared > limit:
                raise _length_error(declared / rate, min_s, max_s)
            mono = _read_mono(f, limit)
    except ClipError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError, EOFError) as exc:
        reason = getattr(exc, "error_string", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ClipError(400, "invalid_audio", f"not a readable audio file: {reason}") from None
    seconds = len(mono) / rate
    if len(mono) >= limit:  # no usable length in the header: the read stopped at the limit
        raise ClipError(
            400, "invalid_length", f"clip is longer than {max_s:g} s; it must be between {min_s:g} and {max_s:g} s"
        )
    if seconds < min_s or seconds > max_s:
        raise _length_error(seconds, min_s, max_s)
    if not np.isfinite(mono).all():
        raise ClipError(400, "invalid_audio", "the audio holds non-finite samples (NaN or infinity)")
    if rate != SAMPLE_RATE:
        import torch
        import torchaudio.functional as F

        mono = F.resample(torch.from_numpy(np.ascontiguousarray(mono)), rate, SAMPLE_RATE).numpy()
    wav = _trim(np.ascontiguousarray(mono, dtype=np.float32))
    if len(wav) == 0:
        raise _length_error(seconds, min_s, max_s)
    return wav


def decode_base64_clip(b64: str, *, min_s: float = 1.0, max_s: float = 30.0) -> np.ndarray:
    """`decode_clip` for a base64 string in a JSON body; bad base64 is ClipError 400 `invalid_audio`."""
    if not isinstance(b64, str):
        raise ClipError(400, "invalid_audio", "audio must be a base64 string")
    try:
        data = base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ClipError(400, "invalid_audio", "audio is not valid base64") from None
    return decode_clip(data, min_s=min_s, max_s=max_s)


async def encode_clip(scheduler: Any, wav: np.ndarray) -> np.ndarray:
    """Mimi codes [32, T] int64 of a decoded clip, encoded on the engine thread (Scheduler.call, between two frame
    steps, so it never races the frame loop). Scheduler errors (not ready, shutting down) propagate."""
    import torch

    codes = await scheduler.call(lambda gen: gen.codec.encode(torch.from_numpy(wav)).cpu().numpy())
    return np.ascontiguousarray(codes, dtype=np.int64)
