"""Response encoders: float32 PCM chunks in, the bytes of one streamed audio file out, chunk by chunk.

Each encoder hands back the bytes it has ready after every chunk, so audio leaves the server while it is generated.
`pcm` is raw 16-bit little-endian mono; `wav` is a header with "unknown length" sizes (0xFFFFFFFF, what streaming
WAV servers send and players accept) followed by the same PCM; `flac`, `mp3` and `opus` go through libsndfile
(soundfile) writing into an in-memory sink. libsndfile seeks back at close to patch headers (FLAC's sample count, the
MP3 LAME tag); bytes already sent cannot change, so those late patches are dropped: a streamed FLAC says "length
unknown", which the format allows, and MP3 is constant-bitrate so a player's length estimate stays right.
"""

from __future__ import annotations

import struct
from typing import Literal

import numpy as np

AudioFormat = Literal["pcm", "wav", "flac", "mp3", "opus"]
FORMATS: tuple[str, ...] = ("pcm", "wav", "flac", "mp3", "opus")
MEDIA_TYPES: dict[str, str] = {
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
}
# libsndfile (format, subtype, extra SoundFile kwargs) for the compressed formats.
_SNDFILE: dict[str, tuple[str, str, dict]] = {
    "flac": ("FLAC", "PCM_16", {}),
    "mp3": ("MP3", "MPEG_LAYER_III", {"bitrate_mode": "CONSTANT", "compression_level": 0.5}),
    "opus": ("OGG", "OPUS", {}),
}
UNKNOWN_SIZE = 0xFFFFFFFF


def to_int16(pcm: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> 16-bit little-endian bytes (clipped: random weights can overshoot)."""
    x = np.clip(np.asarray(pcm, dtype=np.float32).reshape(-1), -1.0, 1.0)
    return (x * 32767.0).round().astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int | None = None) -> bytes:
    """A 44-byte PCM16 mono WAV header; `data_bytes=None` writes the streaming 'unknown length' sizes."""
    data = UNKNOWN_SIZE if data_bytes is None else data_bytes
    riff = UNKNOWN_SIZE if data_bytes is None else 36 + data_bytes
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", riff) + b"WAVE" + fmt + b"data" + struct.pack("<I", data)


class _Sink:
    """A write-only, seekable in-memory file for libsndfile that remembers which bytes were already sent."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0
        self.sent = 0

    def write(self, data) -> int:
        data = bytes(data)
        end = self.pos + len(data)
        if end > len(self.buf):
            self.buf.extend(b"\0" * (end - len(self.buf)))
        self.buf[self.pos : end] = data  # a patch below `sent` is kept here but never re-sent
        self.pos = end
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: len(self.buf)}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, size: int = -1) -> bytes:
        return b""

    def take(self) -> bytes:
        out = bytes(self.buf[self.sent :])
        self.sent = len(self.buf)
        return out


class Encoder:
    """`encode(pcm) -> bytes` per chunk, then `finish() -> bytes` once; either may return b''."""

    def __init__(self, fmt: str, sample_rate: int) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown audio format {fmt!r}; supported: {', '.join(FORMATS)}")
        self.format = fmt
        self.media_type = MEDIA_TYPES[fmt]
        self.sample_rate = sample_rate
        self.samples = 0
        self._header_sent = False
        self._sink: _Sink | None = None
        self._file = None
        if fmt in _SNDFILE:
            import soundfile as sf  # libsndfile: only the formats that need it pay for loading it

            major, subtype, extra = _SNDFILE[fmt]
            self._sink = _Sink()
            self._file = sf.SoundFile(
                self._sink, mode="w", samplerate=sample_rate, channels=1, format=major, subtype=subtype, **extra
            )

    def encode(self, pcm: np.ndarray) -> bytes:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        self.samples += pcm.size
        if self._file is not None:
            self._file.write(np.clip(pcm, -1.0, 1.0))
            return self._sink.take()
        head = b""
        if self.format == "wav" and not self._header_sent:
            head = wav_header(self.sample_rate)
            self._header_sent = True
        return head + to_int16(pcm)

    def finish(self) -> bytes:
        if self._file is not None:
            self._file.close()
            self._file = None
            return self._sink.take()
        if self.format == "wav" and not self._header_sent:  # no audio at all: still a valid, empty WAV
            self._header_sent = True
            return wav_header(self.sample_rate, 0)
        return b""

    def close(self) -> None:
        """Release libsndfile's handle when a stream ends early (cancel, disconnect)."""
        if self._file is not None:
            self._file.close()
            self._file = None
