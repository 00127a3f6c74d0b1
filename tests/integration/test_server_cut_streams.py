"""A stream that ends early says so, to real clients of a real server (uvicorn, the real tiny-random generator on
CPU): a raw body cut by the request timeout ends without its final chunk (httpx reports an incomplete chunked read,
`deploy generate` exits non-zero), SSE ends with an `error` event and never `speech.audio.done`, a whole body is a
504; audio ended by the `max_audio_ms` cap is announced by a header on a whole body and a field of the done event.

The timeout is made certain, not raced: `SlowStep` wraps the real generator's `step()` and, once armed, makes the
step after the request's first chunk last the whole request timeout (a stand-in for a GPU step that stalls), so the
scheduler ends that request as timed out with its first audio already sent."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from csm_runtime.engine import longtext
from csm_runtime.server import create_app
from csm_runtime.server.app import default_loader
from csm_runtime.settings import RuntimeSettings
from tests.fakes.server_fixtures import ServerThread, decode, wait_ready

TOKEN = "cut-test-token-0123456789"
FRAME = 1920
TIMEOUT_S = 2.0
SERVER_CAP_MS = 320  # the server's own max_audio_ms: 4 frames
LONG = "This sentence goes on and on. It is followed by another. And a third one ends it."
DEPLOY = Path(sys.executable).with_name("deploy")


class SlowStep:
    """Once armed, the step after `after` more steps sleeps TIMEOUT_S: the request running then times out."""

    def __init__(self, gen) -> None:
        self.gen, self.step_real, self.left = gen, gen.step, None
        gen.step = self.step

    def arm(self, after: int = 2) -> None:  # first_chunk_frames = 2: the first chunk is out after two steps
        self.left = after

    def step(self):
        if self.left == 0:
            self.left = None
            time.sleep(TIMEOUT_S)
        elif self.left is not None:
            self.left -= 1
        return self.step_real()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cut")
    (tmp / "token").write_text(TOKEN)
    settings = RuntimeSettings(model="tiny-random", device="cpu", dtype="float32", cpu_threads=1, max_streams=2,
                               max_audio_ms=SERVER_CAP_MS, request_timeout_s=TIMEOUT_S, first_chunk_frames=2,
                               chunk_frames=1, token_file=str(tmp / "token"))  # fmt: skip
    load_real, slow = default_loader(settings), []

    def load():
        gen = load_real()
        slow.append(SlowStep(gen))
        return gen

    with ServerThread(create_app(settings, loader=load)) as srv:
        srv.client = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        wait_ready(srv.client)
        srv.slow, srv.token_file = slow[0], tmp / "token"
        yield srv
        srv.client.close()


def speech(**kw) -> dict:
    return {"model": "tts-1", "voice": "alloy", "input": LONG, "response_format": "pcm", **kw}


def sse_events(server, body: dict) -> list[dict]:
    with server.client.stream("POST", "/v1/audio/speech", json={**body, "stream_format": "sse"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]


def test_a_timed_out_raw_stream_ends_without_its_final_chunk(server):
    server.slow.arm()
    received = bytearray()
    with server.client.stream("POST", "/v1/audio/speech", json=speech()) as r:
        assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            for data in r.iter_raw():
                received.extend(data)
    assert len(received) >= 2 * FRAME * 2  # the first chunk arrived before the cut


def test_a_timed_out_sse_stream_ends_with_an_error_event_not_done(server):
    server.slow.arm()
    events = sse_events(server, speech())
    kinds = [e["type"] for e in events]
    assert kinds[0] == "speech.audio.delta" and kinds[-1] == "error" and "speech.audio.done" not in kinds
    assert events[-1]["error"]["code"] == "timeout" and "incomplete" in events[-1]["error"]["message"]


def test_a_whole_body_that_timed_out_is_a_504_not_a_short_file(server):
    server.slow.arm()
    r = server.client.post("/v1/audio/speech", json=speech(stream=False))
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text


def test_deploy_generate_reports_a_cut_stream_as_an_error(server, tmp_path):
    server.slow.arm()
    out = tmp_path / "cut.wav"
    args = ["generate", "--endpoint", server.url, "--token-file", str(server.token_file), "--format", "wav", LONG,
            "-o", str(out)]  # fmt: skip
    r = subprocess.run([str(DEPLOY), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "cut the stream short" in r.stderr and "wrote" not in r.stdout, r.stderr


def test_deploy_generate_shows_progress_on_stderr_and_its_result_on_stdout(server, tmp_path):
    """Through the output sink: the in-place progress line (then ended) on stderr, one result line on stdout; with
    --json only the result, as JSON, and no progress line."""
    args = [str(DEPLOY), "generate", "--endpoint", server.url, "--token-file", str(server.token_file), "Hi."]
    out = tmp_path / "ok.wav"
    r = subprocess.run([*args, "-o", str(out)], capture_output=True, timeout=120)  # bytes: the \r stays
    stdout, stderr = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, stderr
    assert stdout.startswith(f"wrote {out}: ") and " TTFA " in stdout and stdout.count("\n") == 1, stdout
    assert stderr.startswith("\r  receiving: ") and stderr.endswith(" s\n") and "\n" not in stderr[:-1], stderr
    j = subprocess.run([*args, "-o", str(tmp_path / "j.wav"), "--json"], capture_output=True, text=True, timeout=120)
    assert j.returncode == 0, j.stderr
    assert json.loads(j.stdout)["bytes"] == (tmp_path / "j.wav").stat().st_size and j.stderr == ""


def test_the_audio_cap_is_announced_on_a_whole_body_and_in_the_done_event(server):
    r = server.client.post("/v1/audio/speech", json=speech(stream=False))  # the server's cap: 4 frames
    assert r.status_code == 200 and r.headers["x-audio-truncated"] == "max_audio_ms"
    assert len(decode(r.content, "pcm")) == SERVER_CAP_MS // 80 * FRAME
    r = server.client.post("/v1/audio/speech", json=speech(stream=False, max_audio_ms=160))  # the request's cap
    assert r.status_code == 200 and r.headers["x-audio-truncated"] == "max_audio_ms"
    events = sse_events(server, speech(response_format="wav"))
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["truncated"] == "max_audio_ms"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(decode(audio, "wav")) == SERVER_CAP_MS // 80 * FRAME


def test_audio_that_said_the_whole_text_is_not_marked_truncated(server, monkeypatch):
    """Each sentence capped at one frame (random weights never end one themselves): three sentences, three frames,
    within the server's four, so the text was all said."""
    monkeypatch.setattr(longtext, "PIECE_BASE_MS", 80)
    monkeypatch.setattr(longtext, "PIECE_MS_PER_CHAR", 0)
    r = server.client.post("/v1/audio/speech", json=speech(stream=False))
    assert r.status_code == 200 and "x-audio-truncated" not in r.headers
    assert len(decode(r.content, "pcm")) == 3 * FRAME
    events = sse_events(server, speech())
    assert events[-1]["type"] == "speech.audio.done" and "truncated" not in events[-1]


def test_the_server_still_serves_after_cut_streams(server):
    r = server.client.post("/v1/audio/speech", json=speech(max_audio_ms=160))
    assert r.status_code == 200 and len(decode(r.content, "pcm")) == 2 * FRAME
