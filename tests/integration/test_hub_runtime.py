"""The runtime against a local stand-in for the Hub (tests/fakes/hub/) serving a small random CSM checkpoint as the
gated `acme/csm-gated`: `csm-runtime serve` and `generate` download it with a token file and explain themselves in
one line without one (or with a token the Hub refuses, or for a repo or revision that does not exist); /ready shows
the download's progress; the Mimi download carries the same token; the token is in no output, log or argv.

Each client is its own process with HF_ENDPOINT pointing at the stand-in and a fresh HF_HOME (huggingface_hub reads
both once, at import). The server uses a full-size random Mimi (`CSM_MIMI_WEIGHTS=random`): the stand-in's real-size
Mimi file is 385 MB, tested on its own in test_fake_hub.py.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from csm_runtime.engine.download import checkpoint_files
from tests.fakes.hub import MIMI_FILENAME, MIMI_REPO, FakeHub, TlsFiles, build_csm_checkpoint, make_tls_files
from tests.fakes.server_fixtures import free_port

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = [sys.executable, "-m", "csm_runtime.cli"]
GATED, MISSING = "acme/csm-gated", "acme/no-such-model"
TOKEN = f"hf_{secrets.token_hex(17)}"  # may read the gated repo
OUTSIDER = f"hf_{secrets.token_hex(17)}"  # a valid token of an account that did not accept the terms
BOGUS = f"hf_{secrets.token_hex(17)}"  # a token the Hub does not know
BEARER = "hub-test-bearer-0123456789"
CHUNK = 10 * 1024 * 1024  # huggingface_hub writes downloads in whole 10 MiB chunks


@dataclass(frozen=True)
class Content:
    checkpoint: Path
    mimi: Path  # a small stand-in file at Mimi's name: enough to test who downloads it, not to load it
    tls: TlsFiles


@pytest.fixture(scope="module")
def content(tmp_path_factory) -> Content:
    root = tmp_path_factory.mktemp("hub-content")
    mimi = root / "mimi"
    mimi.mkdir()
    (mimi / MIMI_FILENAME).write_bytes(os.urandom(64 * 1024))
    return Content(build_csm_checkpoint(root / "csm"), mimi, make_tls_files(root / "tls"))


@pytest.fixture
def hub(content: Content) -> Iterator[FakeHub]:
    with FakeHub(granted=(TOKEN,), outsiders=(OUTSIDER,), tls=content.tls) as hub:
        hub.add_repo(GATED, content.checkpoint, gated=True)
        hub.add_repo(MIMI_REPO, content.mimi)
        yield hub
        assert hub.unknown() == [], "the runtime used an endpoint the stand-in does not model"


def token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / f"hf-token-{token[-6:]}"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def runtime_env(hub: FakeHub, tmp_path: Path, **extra: str) -> dict[str, str]:
    drop = ("HF_", "HUGGING_FACE", "TRANSFORMERS_OFFLINE", "REQUESTS_CA_BUNDLE", "CSM_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(hub.client_env(), HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    env.update(CSM_DEVICE="cpu", CSM_CPU_THREADS="1", CSM_MAX_STREAMS="1", CSM_MIMI_WEIGHTS="random", **extra)
    return env


def assert_no_token(*texts: str) -> None:
    for token in (TOKEN, OUTSIDER, BOGUS):
        for text in texts:
            assert token not in text


def serve_fails(hub: FakeHub, tmp_path: Path, model: str, *args: str, **env: str) -> str:
    """`csm-runtime serve` that must refuse to start: its one stderr line."""
    cmd = [*RUNTIME, "serve", "--model", model, "--port", str(free_port()), "--profile", "off", *args]
    res = subprocess.run(cmd, env=runtime_env(hub, tmp_path, **env), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert_no_token(res.stdout, res.stderr)
    return lines[0]


def test_serve_refuses_what_the_hub_will_not_hand_over_in_one_line(hub, tmp_path):
    page = f"{hub.url}/{GATED}"
    line = serve_fails(hub, tmp_path, GATED)
    assert f"{GATED} is a gated repository and no Hub token was sent: request access on {page}" in line
    assert "HF_TOKEN" in line and "hf auth login" in line and "--hf-token-file" in line

    line = serve_fails(hub, tmp_path, GATED, "--hf-token-file", str(token_file(tmp_path, OUTSIDER)))
    assert f"{GATED} is a gated repository and the Hub token's account has no access to it" in line
    assert f"request access on {page}" in line

    line = serve_fails(hub, tmp_path, GATED, "--hf-token-file", str(token_file(tmp_path, BOGUS)))
    assert "the Hub refused the token as invalid or revoked" in line and f"{hub.url}/settings/tokens" in line

    line = serve_fails(hub, tmp_path, MISSING, "--hf-token-file", str(token_file(tmp_path, TOKEN)))
    assert f"no model repository {MISSING!r} on the Hub" in line

    line = serve_fails(
        hub, tmp_path, GATED, "--hf-token-file", str(token_file(tmp_path, TOKEN)), CSM_REVISION="no-such-branch"
    )
    assert f"{GATED} has no revision 'no-such-branch' on the Hub" in line

    line = serve_fails(hub, tmp_path, GATED, "--hf-token-file", str(tmp_path / "missing-file"))
    assert "cannot read the Hub token file" in line
    assert hub.fetched() == []  # one HEAD each, no download
    assert {r.caller for r in hub.requests} == {"anonymous", "outsider", "invalid", "granted"}


@pytest.fixture
def serve_proc(hub, tmp_path) -> Iterator[tuple[subprocess.Popen, int, Path]]:
    bearer = tmp_path / "bearer"
    bearer.write_text(BEARER)
    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [*RUNTIME, "serve", "--model", GATED, "--port", str(port), "--token-file", str(bearer), "--profile", "off"]
    cmd += ["--hf-token-file", str(token_file(tmp_path, TOKEN))]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, env=runtime_env(hub, tmp_path), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    yield proc, port, log
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_serve_downloads_the_gated_checkpoint_with_its_token_file_and_shows_progress(hub, content, serve_proc):
    proc, port, log = serve_proc
    hub.hold_downloads(at_byte=2 * CHUNK + 123)  # the weights stop there until released
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    files = [p.name for p in content.checkpoint.iterdir()]
    total = sum((content.checkpoint / f).stat().st_size for f in checkpoint_files(files))
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {BEARER}"}
    seen: dict | None = None
    try:
        deadline = time.monotonic() + 180
        while seen is None:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                r = httpx.get(url + "/ready", headers=headers, timeout=10)
                download = r.json().get("download") if r.status_code == 503 else None
                if download and download["done_bytes"] >= 2 * CHUNK:
                    seen = download
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    finally:
        hub.release_downloads()
    assert seen["repo"] == GATED and seen["total_bytes"] == total and 2 * CHUNK <= seen["done_bytes"] < total
    assert seen["files"] == len(checkpoint_files(files))

    deadline = time.monotonic() + 240
    while (r := httpx.get(url + "/ready", headers=headers, timeout=10)).status_code != 200:
        assert proc.poll() is None and r.json().get("status") != "failed", log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)
    assert r.json()["model"] == GATED
    body = {"model": "tts-1", "voice": "alloy", "input": "Hi.", "response_format": "pcm", "max_audio_ms": 160}
    speech = httpx.post(url + "/v1/audio/speech", json=body, headers=headers, timeout=120)
    assert speech.status_code == 200 and len(speech.content) > 0
    assert f"{GATED}/model.safetensors" in hub.fetched(GATED)
    assert all(r.caller == "granted" for r in hub.requests if r.repo == GATED and r.authorized)
    assert all(not r.authorized for r in hub.requests if r.endpoint == "cdn")  # never to the CDN
    assert_no_token(log.read_text(), cmdline.decode(errors="replace"), repr(hub.requests))


def test_generate_downloads_with_the_token_and_explains_itself_without(hub, tmp_path):
    out = tmp_path / "out.wav"
    base = [*RUNTIME, "generate", "--model", GATED, "--text", "Hi.", "--max-ms", "160", "-o", str(out), "--json"]
    env = runtime_env(hub, tmp_path)
    refused = subprocess.run(base, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"Error: {GATED} is a gated repository and no Hub token was sent: request access on {hub.url}/{GATED}"
        )
    )
    assert not out.exists()
    # HF_TOKEN works as with the Hub's own tools; the token file wins over it
    via_env = subprocess.run(base, env={**env, "HF_TOKEN": TOKEN}, capture_output=True, text=True, timeout=300)
    assert via_env.returncode == 0, via_env.stderr[-2000:]
    assert json.loads(via_env.stdout.strip().splitlines()[-1])["frames"] >= 1
    out.unlink()
    with_file = [*base, "--hf-token-file", str(token_file(tmp_path, TOKEN))]
    res = subprocess.run(with_file, env={**env, "HF_TOKEN": OUTSIDER}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.read_bytes()[:4] == b"RIFF"
    assert_no_token(refused.stdout, refused.stderr, via_env.stdout, via_env.stderr, res.stdout, res.stderr)


MIMI_SCRIPT = """
import sys
from csm_runtime.engine.codec import resolve_mimi_weights
from csm_runtime.engine.hub import HubAccessError
token = sys.stdin.read().strip()
try:
    print("PATH", resolve_mimi_weights("auto", "acme/csm-gated", token=token))
except HubAccessError as exc:
    print("REFUSED", exc)
"""


def test_the_mimi_download_carries_the_same_token(hub, tmp_path):
    env = runtime_env(hub, tmp_path)
    runs = {}
    for name, token in (("bogus", BOGUS), ("granted", TOKEN)):  # the token travels on stdin, never in argv
        res = subprocess.run(
            [sys.executable, "-c", MIMI_SCRIPT],
            input=token,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        runs[name] = res.stdout.strip().splitlines()[-1]
        assert_no_token(res.stdout, res.stderr)
    assert runs["bogus"].startswith(
        f"REFUSED Mimi weights: the Hub refused the token as invalid or revoked while downloading {MIMI_REPO}"
    )
    assert runs["granted"].startswith("PATH ") and runs["granted"].endswith(MIMI_FILENAME)
    heads = [(r.caller, r.status) for r in hub.requests if r.repo == MIMI_REPO and r.endpoint == "resolve"]
    assert heads == [("invalid", 401), ("granted", 302)]
