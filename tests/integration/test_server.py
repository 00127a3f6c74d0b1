"""The runtime server end to end: real uvicorn on a free port, the REAL StreamingGenerator (tiny-random on CPU),
real HTTP clients (httpx and the official `openai` package). Short utterances keep the file fast; nothing here
asserts wall-clock time: "streamed" is shown by ordering (bytes arrive while the stream is still active)."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from csm_runtime.server import create_app
from csm_runtime.server.app import default_loader
from csm_runtime.settings import RuntimeSettings
from tests.fakes.server_fixtures import ServerThread, decode, wait_ready

TOKEN = "test-token-0123456789"
FRAME = 1920  # samples per 80 ms frame at 24 kHz
LONG_MS = 16_000  # 200 frames: far longer than any test lets a stream run


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample of a Prometheus exposition, 0 when absent."""
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


def speech(max_ms: int, fmt: str = "wav", **kw) -> dict:
    return {"model": "tts-1", "voice": "alloy", "input": "Hello from the test.", "response_format": fmt,
            "max_audio_ms": max_ms, **kw}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module. Its warm-up is held on an event until /ready was seen answering 503."""
    tmp = tmp_path_factory.mktemp("srv")
    (tmp / "token").write_text(TOKEN + "\n")
    settings = RuntimeSettings(model="tiny-random", device="cpu", dtype="float32", cpu_threads=1, max_streams=8,
                               queue_size=1, max_audio_ms=LONG_MS, token_file=str(tmp / "token"),
                               request_timeout_s=120, shutdown_grace_s=2)  # fmt: skip
    gate, seen = threading.Event(), []
    load_real = default_loader(settings)

    def load():
        gen = load_real()
        warmup = gen.warmup
        gen.warmup = lambda: gate.wait(120) and warmup()  # hold warm-up until the test released it
        return gen

    app = create_app(settings, loader=load, profile="test")
    with ServerThread(app) as srv:
        client = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
        deadline = time.monotonic() + 120
        while not seen or seen[-1][1].get("status") != "warming":
            r = client.get("/ready")
            seen.append((r.status_code, r.json()))
            assert time.monotonic() < deadline
            time.sleep(0.05)
        gate.set()
        srv.ready_before_warmup = seen
        srv.ready = wait_ready(client)
        srv.client = client
        yield srv
        client.close()


def test_ready_is_503_until_warmup_finishes_then_reports_model(server):
    codes = {code for code, _ in server.ready_before_warmup}
    states = {body["status"] for _, body in server.ready_before_warmup}
    assert codes == {503} and "warming" in states and states <= {"loading", "warming"}
    assert server.ready["status"] == "ready" and server.ready["model"] == "tiny-random"
    assert server.ready["device"] == "cpu" and server.ready["profile"] == "test" and server.ready["max_streams"] == 8


def test_health_is_public_and_every_other_route_needs_the_token(server):
    assert httpx.get(server.url + "/health").status_code == 200
    for method, path in [("GET", "/ready"), ("GET", "/metrics"), ("GET", "/v1/models"), ("GET", "/v1/voices"),
                         ("POST", "/v1/audio/speech")]:  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = httpx.request(method, server.url + path, headers=headers, json=speech(80))
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["error"]["type"] == "authentication_error"
            assert r.headers["www-authenticate"] == "Bearer"


def test_openai_client_streams_a_valid_wav_of_the_requested_length(server, tmp_path):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN, max_retries=0)
    out = tmp_path / "hello.wav"
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Hello there.", response_format="wav", extra_body={"max_audio_ms": 640}
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        response.stream_to_file(out)
    audio = decode(out.read_bytes(), "wav")
    assert len(audio) == 8 * FRAME  # random weights never emit the all-zero end frame: max_audio_ms decides
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    with pytest.raises(openai.BadRequestError, match="unknown voice"):
        client.audio.speech.create(model="tts-1", voice="nobody", input="Hi.")


@pytest.mark.parametrize("fmt", ["pcm", "flac", "mp3", "opus"])
def test_every_format_streams_decodable_audio(server, fmt):
    r = server.client.post("/v1/audio/speech", json=speech(320, fmt))
    assert r.status_code == 200, r.text
    audio = decode(r.content, fmt)
    slack = 2 * 1152 if fmt == "mp3" else 0  # MP3 frames pad the end
    assert 4 * FRAME <= len(audio) <= 4 * FRAME + slack


def test_non_streamed_wav_carries_its_real_sizes(server):
    r = server.client.post("/v1/audio/speech", json=speech(160, stream=False))
    assert r.status_code == 200 and "chunked" not in r.headers.get("transfer-encoding", "")
    info = sf.info(__import__("io").BytesIO(r.content))
    assert info.frames == 2 * FRAME


BAD = [
    ("empty input", speech(80, input=""), "input"),
    ("whitespace input", speech(80, input="   "), "input"),
    ("input too long", speech(80, input="a" * 4097), "input"),
    ("unknown voice", speech(80, voice="nobody"), "voice"),
    ("unknown format", speech(80, fmt="aac"), "response_format"),
    ("speed it cannot honour", speech(80, speed=1.5), "speed"),
    ("speed out of range", speech(80, speed=9), "speed"),
    ("missing voice", {"model": "tts-1", "input": "hi"}, "voice"),
    ("unknown model", speech(80, model="gpt-9"), "model"),
    ("unknown stream format", speech(80, stream_format="chunks"), "stream_format"),
    ("only zero-width characters", speech(80, input="\u200b\u200c\ufeff"), "input"),
    ("only NUL characters", speech(80, input="\x00\x00"), "input"),
    ("temperature too small to sample", speech(80, temperature=5e-324), "temperature"),
    ("instructions too long", speech(80, instructions="a" * 4097), "instructions"),
    ("max_audio_ms below one frame", speech(10), "max_audio_ms"),
]


@pytest.mark.parametrize("name,body,param", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_400_with_an_openai_error_body(server, name, body, param):
    r = server.client.post("/v1/audio/speech", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_bad_json_and_unknown_routes_get_json_errors_too(server):
    r = server.client.post("/v1/audio/speech", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = server.client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["message"]


def test_models_and_voices_list_what_the_server_accepts(server):
    models = [m["id"] for m in server.client.get("/v1/models").json()["data"]]
    assert models[0] == "tiny-random" and "tts-1" in models
    voices = {v["name"]: v for v in server.client.get("/v1/voices").json()["voices"]}
    assert {"alloy", "echo", "fable", "onyx", "nova", "shimmer"} <= set(voices)
    assert voices["echo"]["speaker"] == 1


def test_first_bytes_arrive_while_the_stream_is_still_generating(server):
    before = server.client.get("/metrics").text
    with server.client.stream("POST", "/v1/audio/speech", json=speech(LONG_MS, "pcm")) as r:
        assert r.status_code == 200
        body = r.iter_raw()  # keep a reference: a dropped iterator closes the response (= a disconnect)
        first = next(body)
        during = server.client.get("/metrics").text
        del body
    assert len(first) > 0
    assert metric(during, "csm_active_streams") == 1  # first audio is out, the stream has not finished
    assert metric(during, "csm_frames_generated_total") - metric(before, "csm_frames_generated_total") < 200
    wait_idle(server)


def wait_idle(server, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = server.client.get("/metrics").text
        if metric(text, "csm_active_streams") == 0 and metric(text, "csm_queue_depth") == 0:
            return text
        time.sleep(0.05)
    raise AssertionError("streams still active")


def test_eight_concurrent_clients_get_complete_audio_in_shared_batches(server):
    def one(i: int) -> int:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as c:
            r = c.post("/v1/audio/speech", json=speech(640, input=f"Client number {i} says hello."))
            assert r.status_code == 200, r.text
            return len(decode(r.content, "wav"))

    before = server.client.get("/metrics").text
    with ThreadPoolExecutor(8) as pool:
        lengths = list(pool.map(one, range(8)))
    after = server.client.get("/metrics").text
    assert lengths == [8 * FRAME] * 8
    steps = metric(after, "csm_batch_size_count") - metric(before, "csm_batch_size_count")
    single = metric(after, "csm_batch_size_bucket", 'le="1.0"') - metric(before, "csm_batch_size_bucket", 'le="1.0"')
    assert steps - single > 0, "no decode step ever ran more than one stream"
    assert steps < 8 * 8  # fewer steps than frames: streams shared steps


def test_full_server_answers_429_and_disconnects_free_their_slots(server):
    """8 long streams fill every slot, a 9th waits in the queue (size 1), a 10th is refused with Retry-After.
    Then the 8 clients hang up: their slots are freed long before the streams could have finished, and the queued
    request gets one."""
    before = server.client.get("/metrics").text
    clients = [httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
               for _ in range(8)]  # fmt: skip
    streams = []
    try:
        for c in clients:
            cm = c.stream("POST", "/v1/audio/speech", json=speech(LONG_MS, "pcm"))
            r = cm.__enter__()
            assert r.status_code == 200
            body = r.iter_raw()  # keep the iterator: dropping it would close the response
            assert next(body)  # this stream is running
            streams.append((cm, body))
        queued_status = []
        queued = threading.Thread(target=lambda: queued_status.append(httpx.post(
            server.url + "/v1/audio/speech", json=speech(160), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
        ).status_code))  # fmt: skip
        queued.start()
        deadline = time.monotonic() + 30
        while metric(server.client.get("/metrics").text, "csm_queue_depth") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        refused = server.client.post("/v1/audio/speech", json=speech(LONG_MS))
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert metric(server.client.get("/metrics").text, "csm_active_streams") == 8
    finally:
        for cm, _ in streams:
            cm.__exit__(None, None, None)
        for c in clients:
            c.close()
    queued.join()  # the queued request got a slot once the others hung up
    assert queued_status == [200]
    after = wait_idle(server)
    cancelled = metric(after, "csm_streams_finished_total", 'reason="cancelled"')
    assert cancelled - metric(before, "csm_streams_finished_total", 'reason="cancelled"') == 8
    frames = metric(after, "csm_frames_generated_total") - metric(before, "csm_frames_generated_total")
    assert frames < 8 * 200
