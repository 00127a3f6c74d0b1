"""A client's reference clip (server/clips.py) and the uploaded voices' store (server/voice_store.py), without a
server: what bounds the decoding, and what survives a crash mid-write."""

from __future__ import annotations

import base64
import io
import json
import stat

import numpy as np
import pytest
import soundfile as sf

from csm_runtime.server.clips import ClipError, decode_base64_clip, decode_clip
from csm_runtime.server.voice_store import StoredVoice, VoiceStore, valid_name


def wav(seconds: float, rate: int = 24_000, channels: int = 1, subtype: str = "PCM_16") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    data = np.repeat((0.3 * np.sin(2 * np.pi * 200 * t))[:, None], channels, axis=1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, data, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def refused(data: bytes, **kw) -> ClipError:
    with pytest.raises(ClipError) as info:
        decode_clip(data, **kw)
    return info.value


def test_a_clip_is_mono_24k_in_whole_frames():
    out = decode_clip(wav(2.05, 44_100, 2))
    assert out.dtype == np.float32 and out.ndim == 1 and len(out) == 25 * 1920


def test_a_header_claiming_more_than_the_file_holds_decodes_what_is_there():
    data = bytearray(wav(2.0))
    data[40:44] = (10**8).to_bytes(4, "little")  # the data chunk claims 100 MB
    assert len(decode_clip(bytes(data))) == 25 * 1920


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    err = refused(wav(31.0, 8000))
    assert (err.status, err.code) == (400, "invalid_length") and "31.00 s" in err.message
    err = refused(wav(0.5))
    assert err.code == "invalid_length" and "0.50 s" in err.message


@pytest.mark.parametrize(
    "data,words",
    [
        (wav(2.0, rate=2000), "sample rate"),
        (wav(1.5, channels=17), "channel count"),
        (b"\0" * 1000, "not a readable audio file"),
    ],
    ids=["2 kHz", "17 channels", "zeros"],
)
def test_odd_audio_is_invalid_audio(data, words):
    err = refused(data)
    assert (err.status, err.code) == (400, "invalid_audio") and words in err.message


def test_non_finite_samples_are_refused():
    buf = io.BytesIO()
    sf.write(buf, np.full(48_000, np.nan, np.float32), 24_000, format="WAV", subtype="FLOAT")
    assert "non-finite" in refused(buf.getvalue()).message


def test_base64_clips():
    assert len(decode_base64_clip(base64.b64encode(wav(1.5)).decode())) == 18 * 1920
    with pytest.raises(ClipError, match="not valid base64"):
        decode_base64_clip("not base64!")


def stored(name: str, frames: int = 5, seed: int = 0) -> StoredVoice:
    codes = np.random.default_rng(seed).integers(0, 2048, (32, frames), dtype=np.int64)
    return StoredVoice(name, 1, "d", "Words.", codes, frames * 0.08, 1_800_000_000)


def test_the_store_round_trips_replaces_atomically_and_sweeps_leftovers(tmp_path):
    store = VoiceStore(tmp_path / "v" / "uploaded")
    store.save(stored("a.b"))
    store.save(stored("a.b", frames=7, seed=1))  # a replace: the old codes file goes
    assert stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    assert sorted(p.suffix for p in store.dir.iterdir()) == [".json", ".npy"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in store.dir.iterdir())
    # a crash mid-write: a temporary and codes no meta names; a meta that does not parse is kept, not loaded
    (store.dir / ".tmp-0123").write_bytes(b"{")
    (store.dir / "a.b.deadbeef.npy").write_bytes(b"x")
    (store.dir / "broken.json").write_text("{")
    loaded = VoiceStore(store.dir).load()
    assert list(loaded) == ["a.b"]
    np.testing.assert_array_equal(loaded["a.b"].codes, stored("a.b", frames=7, seed=1).codes)
    assert sorted(p.name for p in store.dir.iterdir() if not p.name.endswith(".npy")) == ["a.b.json", "broken.json"]
    assert len(list(store.dir.glob("*.npy"))) == 1
    store.delete("a.b")
    assert sorted(p.name for p in store.dir.iterdir()) == ["broken.json"]


def test_a_meta_cannot_point_outside_the_store(tmp_path):
    store = VoiceStore(tmp_path / "uploaded")
    store.save(stored("x"))
    meta = json.loads((store.dir / "x.json").read_text())
    (tmp_path / "outside.npy").write_bytes(b"")
    (store.dir / "x.json").write_text(json.dumps({**meta, "codes": "../outside.npy"}))
    assert store.load() == {}


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a" * 65, "x\n", "é"])
def test_names_that_could_escape_or_confuse_are_invalid(tmp_path, name):
    assert not valid_name(name)
    with pytest.raises(ValueError):
        VoiceStore(tmp_path).save(stored(name))
    assert list(tmp_path.iterdir()) == []
