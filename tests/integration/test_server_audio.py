"""Streaming encoders: chunks in, a file every decoder reads out; bytes leave after each chunk, not at the end."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from csm_runtime.server.audio_formats import FORMATS, Encoder, wav_header
from tests.fakes.server_fixtures import decode

SR = 24_000


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.4 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)


def stream(fmt: str, x: np.ndarray, chunk: int = 1920 * 4) -> list[bytes]:
    enc = Encoder(fmt, SR)
    out = [enc.encode(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    return [*out, enc.finish()]


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_file_decodes_to_the_same_length(fmt):
    x = tone(2.0)
    parts = stream(fmt, x)
    y = decode(b"".join(parts), fmt)
    # lossy codecs add priming/padding samples: allow one MP3 granule (1152) of slack, nothing more
    slack = {"mp3": 1152 * 2, "opus": 0}.get(fmt, 0)
    assert abs(len(y) - len(x)) <= slack, (fmt, len(y), len(x))
    if fmt in ("pcm", "wav", "flac"):
        assert np.abs(y[: len(x)] - x[: len(y)]).max() < 1e-3


@pytest.mark.parametrize("fmt", ["pcm", "wav", "flac", "mp3"])
def test_bytes_leave_after_each_chunk_not_only_at_finish(fmt):
    parts = stream(fmt, tone(2.0))
    assert sum(1 for p in parts[:-1] if p) >= len(parts) // 2, [len(p) for p in parts]


def test_streamed_wav_header_says_unknown_length_and_pcm_has_none():
    wav, pcm = stream("wav", tone(0.2)), stream("pcm", tone(0.2))
    assert wav[0][:4] == b"RIFF" and struct.unpack("<I", wav[0][40:44])[0] == 0xFFFFFFFF
    assert b"".join(wav)[44:] == b"".join(pcm)
    assert len(b"".join(pcm)) == int(SR * 0.2) * 2


def test_empty_stream_is_still_a_valid_file_and_clipping_keeps_int16_range():
    assert decode(Encoder("wav", SR).finish(), "wav").size == 0
    assert wav_header(SR, 0)[40:44] == b"\0\0\0\0"
    enc = Encoder("pcm", SR)
    y = np.frombuffer(enc.encode(np.array([2.0, -2.0], np.float32)), "<i2")
    assert list(y) == [32767, -32767]


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown audio format"):
        Encoder("aac", SR)
