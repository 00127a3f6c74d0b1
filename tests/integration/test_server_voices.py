"""The voices API against a real server (uvicorn, tiny-random on CPU): upload, list, show, delete; every refused
upload gets its own 4xx and leaves nothing behind; uploaded voices persist (0600 files) and survive a restart; a
clip is encoded with Mimi once, at upload (a voice file's once, at load), and never again per request.

Mimi's encoder is counted by wrapping MimiCodec.encode (the real one still runs): that is how a test sees that a
request does not re-encode a voice."""

from __future__ import annotations

import io
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

from csm_runtime.engine.codec import MimiCodec, build_mimi
from csm_runtime.server import create_app
from csm_runtime.settings import RuntimeSettings
from tests.fakes.server_fixtures import ServerThread, decode, wait_ready

TOKEN = "voices-test-token-0123456789"
FRAME = 1920
MAX_VOICES = 3
UPLOAD_MAX = 2 << 20  # small, so the 413 tests send little


def clip(seconds: float, rate: int = 24_000, channels: int = 1, fmt: str = "WAV", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))
    data = np.repeat(wave[:, None], channels, axis=1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt)
    return buf.getvalue()


def settings_for(tmp: Path, **kw) -> RuntimeSettings:
    (tmp / "token").write_text(TOKEN)
    (tmp / "voices").mkdir(exist_ok=True)
    base = dict(
        model="tiny-random",
        device="cpu",
        dtype="float32",
        cpu_threads=1,
        max_streams=2,
        max_audio_ms=800,
        token_file=str(tmp / "token"),
        voices_dir=str(tmp / "voices"),
        max_voices=MAX_VOICES,
        voice_upload_max_bytes=UPLOAD_MAX,
    )
    return RuntimeSettings(**{**base, **kw})


class Server:
    def __init__(self, settings: RuntimeSettings) -> None:
        self.app = create_app(settings)
        self.thread = ServerThread(self.app)
        self.store = Path(settings.voices_dir) / "uploaded"

    def __enter__(self):
        self.thread.__enter__()
        self.client = httpx.Client(base_url=self.thread.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
        wait_ready(self.client)
        return self

    def __exit__(self, *exc):
        self.client.close()
        self.thread.__exit__(*exc)

    def upload(self, name="narrator", audio=None, transcript="Hello there, this is a test.", **fields):
        audio = clip(2.05) if audio is None else audio
        data = {"name": name, "transcript": transcript, **fields}
        data = {k: v for k, v in data.items() if v is not None}
        return self.client.post("/v1/voices", data=data, files={"audio": ("clip.wav", audio, "audio/wav")})

    def files(self) -> list[str]:
        return sorted(os.listdir(self.store)) if self.store.is_dir() else []


@pytest.fixture
def encodes(monkeypatch):
    """How many times Mimi's encoder ran (every MimiCodec, the real encode still runs)."""
    calls = []
    real = MimiCodec.encode

    def counting(self, audio):
        calls.append(len(audio))
        return real(self, audio)

    monkeypatch.setattr(MimiCodec, "encode", counting)
    return calls


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("voices")
    with Server(settings_for(tmp)) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _clean_store(request):
    """Each test starts from an empty store on the module's server."""
    yield
    if "server" in request.fixturenames:
        srv = request.getfixturevalue("server")
        for voice in srv.client.get("/v1/voices").json()["voices"]:
            if voice["source"] == "upload":
                srv.client.delete(f"/v1/voices/{voice['id']}")


def test_a_voice_is_created_listed_shown_and_deleted(server):
    r = server.upload(speaker="1", description="warm")
    assert r.status_code == 201, r.text
    voice = r.json()
    assert voice == {
        "id": "narrator",
        "object": "voice",
        "name": "narrator",
        "speaker": 1,
        "description": "warm",
        "transcript": "Hello there, this is a test.",
        "clip_s": 2.0,  # 2.05 s trimmed to 25 whole frames
        "frames": 25,
        "created": voice["created"],
        "source": "upload",
        "has_reference_audio": True,
    }
    assert isinstance(voice["created"], int) and voice["created"] > 1_700_000_000
    listed = {v["id"]: v for v in server.client.get("/v1/voices").json()["voices"]}
    assert listed["narrator"] == voice and listed["alloy"]["source"] == "file"
    assert server.client.get("/v1/voices/narrator").json() == voice
    r = server.client.delete("/v1/voices/narrator")
    assert r.status_code == 200 and r.json() == {"id": "narrator", "object": "voice.deleted", "deleted": True}
    assert server.files() == []
    r = server.client.get("/v1/voices/narrator")
    assert r.status_code == 404 and r.json()["error"]["code"] == "voice_not_found"
    assert server.client.delete("/v1/voices/narrator").status_code == 404
    r = server.client.delete("/v1/voices/alloy")
    assert r.status_code == 409 and r.json()["error"]["code"] == "voice_read_only"


def test_a_wrong_method_hears_every_method_the_path_has(server):
    r = server.client.request("OPTIONS", "/v1/voices/narrator")
    assert r.status_code == 405 and r.headers["allow"] == "GET, DELETE"
    assert server.client.put("/v1/voices").headers["allow"] == "GET, POST"


BAD_UPLOADS = [
    ("not audio", {"audio": b"this is plainly a text file, not a recording" * 10}, 400, "invalid_audio"),
    ("undecodable", {"audio": clip(2.0)[:20] + b"\x34\x12" + clip(2.0)[22:]}, 400, "invalid_audio"),  # bad fmt
    ("corrupt FLAC", {"audio": b"fLaC" + bytes(range(256)) * 20}, 400, "invalid_audio"),
    ("empty file", {"audio": b""}, 400, "invalid_audio"),
    ("too short", {"audio": clip(0.6)}, 400, "invalid_length"),
    ("too long", {"audio": clip(31.0, rate=8000)}, 400, "invalid_length"),
    ("no transcript", {"transcript": None}, 400, "missing_transcript"),
    ("blank transcript", {"transcript": "   "}, 400, "missing_transcript"),
    ("path traversal", {"name": "../x"}, 400, "invalid_name"),
    ("dot", {"name": "."}, 400, "invalid_name"),
    ("dot dot", {"name": ".."}, 400, "invalid_name"),
    ("slash", {"name": "a/b"}, 400, "invalid_name"),
    ("too long a name", {"name": "a" * 65}, 400, "invalid_name"),
    ("empty name", {"name": ""}, 400, "invalid_name"),
    ("space", {"name": "my voice"}, 400, "invalid_name"),
    ("negative speaker", {"speaker": "-1"}, 400, "invalid_value"),
    ("bad replace", {"replace": "maybe"}, 400, "invalid_value"),
    ("a voice file's name", {"name": "alloy"}, 409, "voice_exists"),
]


@pytest.mark.parametrize("fields,status,code", [b[1:] for b in BAD_UPLOADS], ids=[b[0] for b in BAD_UPLOADS])
def test_a_bad_upload_gets_its_error_and_leaves_nothing_behind(server, fields, status, code):
    before = server.client.get("/v1/voices").json()
    r = server.upload(**fields)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    assert server.client.get("/v1/voices").json() == before
    assert server.files() == []


def test_the_length_error_gives_the_clip_length(server):
    r = server.upload(audio=clip(0.6, rate=16_000))
    assert r.status_code == 400 and "0.60 s" in r.json()["error"]["message"]
    r = server.upload(audio=clip(31.0, rate=8000))
    assert r.status_code == 400 and "31.00 s" in r.json()["error"]["message"]


def test_an_upload_over_the_cap_is_413_whether_declared_or_streamed(server):
    big = clip(1.0) + b"\0" * UPLOAD_MAX
    r = server.upload(audio=big)  # Content-Length says it: refused before the body is read
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"

    def chunked():  # no Content-Length: refused at the first byte past the cap
        yield b"--b\r\nContent-Disposition: form-data; name=audio; filename=a.wav\r\n\r\n"
        for _ in range(4):
            yield b"\0" * (UPLOAD_MAX // 2)

    r = server.client.post("/v1/voices", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
    assert server.files() == []
    # other paths keep the 1 MiB cap
    r = server.client.post("/v1/models", content=b"x" * (UPLOAD_MAX // 2 + 1))
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_other_formats_rates_and_channels_are_decoded(server):
    for i, audio in enumerate([clip(2.0, 44_100, 2, "FLAC"), clip(3.0, 16_000, 1, "OGG"), clip(1.5, 48_000, 6)]):
        r = server.upload(name=f"v{i}", audio=audio)
        assert r.status_code == 201, r.text
        assert r.json()["frames"] == round(r.json()["clip_s"] / 0.08) and r.json()["clip_s"] >= 1.44


def test_an_existing_name_needs_replace_and_the_store_is_bounded(server):
    assert server.upload(name="a").status_code == 201
    r = server.upload(name="a", transcript="Another take.")
    assert r.status_code == 409 and r.json()["error"]["code"] == "voice_exists"
    assert server.client.get("/v1/voices/a").json()["transcript"] == "Hello there, this is a test."
    r = server.upload(name="a", transcript="Another take.", audio=clip(3.0, seed=1), replace="true")
    assert r.status_code == 201 and r.json()["transcript"] == "Another take." and r.json()["frames"] == 37
    files = server.files()
    assert len(files) == 2 and files[0].startswith("a.") and files[1] == "a.json"  # the replaced codes are gone
    assert server.upload(name="b").status_code == 201 and server.upload(name="c").status_code == 201
    files = server.files()
    r = server.upload(name="d")
    assert r.status_code == 409 and r.json()["error"]["code"] == "too_many_voices"
    assert server.files() == files
    assert server.upload(name="c", replace="true").status_code == 201  # a replace adds none
    r = server.upload(name="alloy", replace="true")
    assert r.status_code == 409 and r.json()["error"]["code"] == "voice_read_only"


def test_files_are_private_and_codes_are_mimi_of_the_trimmed_clip(server, encodes):
    audio = clip(2.05, rate=24_000)
    assert server.upload(name="exact", audio=audio).status_code == 201
    assert len(encodes) == 1  # encoded once, at upload
    assert stat.S_IMODE(server.store.stat().st_mode) == 0o700
    for name in server.files():
        assert stat.S_IMODE((server.store / name).stat().st_mode) == 0o600, name
    (codes_file,) = [f for f in server.files() if f.endswith(".npy")]
    stored = np.load(server.store / codes_file)
    wav, _ = sf.read(io.BytesIO(audio), dtype="float32")
    trimmed = wav[: len(wav) // FRAME * FRAME]
    # an independent Mimi built the way tiny-random builds it (same seed): same weights, same codes
    codec = MimiCodec(build_mimi(None, torch.device("cpu"), seed=0, tiny=True), 1)
    expected = codec.encode(torch.from_numpy(trimmed)).numpy()
    assert stored.dtype == np.int64 and stored.shape == (32, 25)
    np.testing.assert_array_equal(stored, expected)
    untrimmed = codec.encode(torch.from_numpy(wav)).numpy()
    assert untrimmed.shape[1] == 26  # the partial frame is what trimming leaves out


def test_speaking_with_an_uploaded_voice_never_encodes_it_again(server, encodes):
    assert server.upload(name="talker", audio=clip(1.5, rate=48_000)).status_code == 201
    assert len(encodes) == 1
    body = {"model": "tts-1", "voice": "talker", "input": "Hi there.", "response_format": "pcm", "max_audio_ms": 240}
    hits = _metric(server, "csm_prefix_cache_hits_total")
    for _ in range(2):
        r = server.client.post("/v1/audio/speech", json=body)
        assert r.status_code == 200 and len(decode(r.content, "pcm")) > 0
    assert len(encodes) == 1
    # the second request reused the voice's prefilled prefix (the engine's prefix cache, seen in /metrics)
    assert _metric(server, "csm_prefix_cache_hits_total") >= hits + 1
    assert _metric(server, "csm_prefix_cache_entries") >= 1


def _metric(server, name: str) -> float:
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_uploaded_voices_survive_a_restart(tmp_path, encodes):
    settings = settings_for(tmp_path)
    with Server(settings) as first:
        created = first.upload(name="keeper", speaker="1").json()
        assert first.upload(name="gone").status_code == 201
        assert first.client.delete("/v1/voices/gone").status_code == 200
        files = first.files()
    (first.store / ".tmp-halfwritten").write_bytes(b"x")  # a crash mid-write leaves a temporary
    with Server(settings) as second:
        assert second.client.get("/v1/voices/keeper").json() == created
        assert second.client.get("/v1/voices/gone").status_code == 404
        assert second.files() == files  # the temporary is swept
        calls = len(encodes)
        body = {"model": "tts-1", "voice": "keeper", "input": "Back again.", "response_format": "pcm"}
        r = second.client.post("/v1/audio/speech", json={**body, "max_audio_ms": 160})
        assert r.status_code == 200 and len(encodes) == calls


def test_a_voice_files_clip_is_encoded_once_at_load(tmp_path, encodes):
    settings = settings_for(tmp_path)
    voices = Path(settings.voices_dir)
    (voices / "ref.flac").write_bytes(clip(1.3, 44_100, 1, "FLAC"))
    (voices / "mine.yaml").write_text('voices:\n  ref: {speaker: 1, audio: ref.flac, transcript: "A reference."}\n')
    with Server(settings) as srv:
        loaded = len(encodes)
        assert loaded >= 1
        voice = srv.client.get("/v1/voices/ref").json()
        assert voice["source"] == "file" and voice["has_reference_audio"] and voice["frames"] == 16
        body = {"model": "tts-1", "voice": "ref", "input": "Hello.", "response_format": "pcm", "max_audio_ms": 160}
        for _ in range(2):
            assert srv.client.post("/v1/audio/speech", json=body).status_code == 200
        assert len(encodes) == loaded


def test_two_uploads_of_one_name_at_once_store_one_voice(server):
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda seed: server.upload(name="twin", audio=clip(2.0, seed=seed)), [1, 2]))
    assert sorted(r.status_code for r in answers) == [201, 409]
    assert len(server.files()) == 2


def test_an_upload_while_the_model_loads_is_503_and_leaves_nothing(tmp_path):
    """A loader that never finishes loading (no model needed): the clip cannot be encoded yet."""
    release = threading.Event()

    def loader():
        release.wait(30)
        raise RuntimeError("never loaded")

    settings = settings_for(tmp_path)
    with ServerThread(create_app(settings, loader=loader)) as srv:
        client = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        r = client.post(
            "/v1/voices", data={"name": "early", "transcript": "Too soon."}, files={"audio": ("a.wav", clip(1.5))}
        )
        release.set()
        client.close()
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready" and r.headers["retry-after"] == "5"
    assert not (tmp_path / "voices" / "uploaded").exists()


def test_a_clip_longer_than_the_context_budget_is_refused_with_the_budget(tmp_path):
    """A reference over `max_context_frames` would be left out of every prompt: refused at upload instead."""
    with Server(settings_for(tmp_path, max_context_frames=20)) as srv:  # 19 frames of reference audio: 1.52 s
        r = srv.upload(audio=clip(2.05))
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_length", r.text
        assert "context budget holds 1.5 s" in r.json()["error"]["message"]
        assert srv.files() == []
        assert srv.upload(audio=clip(1.2)).status_code == 201
