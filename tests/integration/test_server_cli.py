"""`csm-runtime serve` as a real process: unsafe binds are refused; a served model answers, never logs its token,
and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from csm_runtime.commands.serve import check_bind, is_loopback
from csm_runtime.settings import RuntimeSettings
from tests.fakes.server_fixtures import free_port, wait_ready

SERVE = [sys.executable, "-m", "csm_runtime.cli", "serve"]  # the `csm-runtime serve` console script


@pytest.mark.parametrize("host,ok", [("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.0.5", True),
                                     ("0.0.0.0", False), ("10.0.0.2", False), ("example.org", False)])  # fmt: skip
def test_loopback_detection(host, ok):
    assert is_loopback(host) is ok


def test_public_bind_without_token_is_refused_with_a_clear_message(tmp_path):
    r = subprocess.run([*SERVE, "--host", "0.0.0.0", "--model", "tiny-random"], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 2
    assert "refusing to bind 0.0.0.0:8000 without a token" in r.stderr and "--token-file" in r.stderr
    (tmp_path / "tok").write_text("a-token")
    check_bind(RuntimeSettings(host="0.0.0.0", token_file=str(tmp_path / "tok")))  # with a token it is allowed


def test_empty_token_file_is_refused(tmp_path):
    (tmp_path / "tok").write_text("\n")
    r = subprocess.run([*SERVE, "--token-file", str(tmp_path / "tok"), "--port", str(free_port())],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "is empty" in r.stderr


def test_empty_token_file_is_refused_before_anything_is_written(tmp_path):
    """A public bind would make a self-signed certificate in ./tls: an empty token file stops it first."""
    (tmp_path / "tok").write_text("")
    r = subprocess.run([*SERVE, "--host", "0.0.0.0", "--token-file", "tok", "--port", str(free_port())],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "is empty" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_serve_process_answers_hides_its_token_and_stops_on_sigterm(tmp_path):
    token = "s3cret-token-do-not-log"
    (tmp_path / "tok").write_text(token)
    port = free_port()
    env = {**os.environ, "CSM_DEVICE": "cpu", "CSM_CPU_THREADS": "1", "CSM_MAX_STREAMS": "2"}
    log = (tmp_path / "log").open("w+")
    proc = subprocess.Popen([*SERVE, "--model", "tiny-random", "--port", str(port), "--token-file",
                             str(tmp_path / "tok"), "--profile", "off"], stdout=log, stderr=subprocess.STDOUT,
                            env=env)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "log").read_text()
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
            assert wait_ready(c)["model"] == "tiny-random"
            r = c.post("/v1/audio/speech", json={"model": "tts-1", "voice": "echo", "input": "Hi.",
                                                  "response_format": "pcm", "max_audio_ms": 160})  # fmt: skip
            assert r.status_code == 200 and len(r.content) == 2 * 1920 * 2
        assert httpx.get(url + "/ready", headers={"Authorization": "Bearer nope"}).status_code == 401
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught: exit by SIGTERM, not a crash
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = (tmp_path / "log").read_text()
    assert "serving tiny-random" in text and "warm-up done" in text and "draining streams" in text
    assert token not in text
