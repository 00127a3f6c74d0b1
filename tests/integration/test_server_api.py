"""The API's contract against a real server (uvicorn, tiny-random on CPU): the OpenAPI document says what the server
does, request limits, OpenAI's SSE stream format, the public playground page, and long text said as one stream."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest

from csm_runtime.engine import longtext
from csm_runtime.server import create_app
from csm_runtime.server.body_limit import CONTEXT_BODY_BYTES
from csm_runtime.settings import RuntimeSettings
from tests.fakes.server_fixtures import ServerThread, decode, wait_ready

TOKEN = "api-test-token-0123456789"
FRAME = 1920


def speech(max_ms: int = 160, fmt: str = "pcm", **kw) -> dict:
    return {"model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": fmt, "max_audio_ms": max_ms, **kw}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    (tmp / "token").write_text(TOKEN)
    settings = RuntimeSettings(
        model="tiny-random",
        device="cpu",
        dtype="float32",
        cpu_threads=1,
        max_streams=4,
        max_audio_ms=60_000,
        token_file=str(tmp / "token"),
    )
    with ServerThread(create_app(settings)) as srv:
        srv.client = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
        wait_ready(srv.client)
        yield srv
        srv.client.close()


def test_openapi_needs_the_token_and_documents_what_the_server_serves(server):
    assert httpx.get(server.url + "/openapi.json").status_code == 401
    doc = server.client.get("/openapi.json").json()
    assert "422" not in json.dumps(doc["paths"]) and "HTTPValidationError" not in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's token (--token-file).",
    }
    request = doc["components"]["schemas"]["SpeechRequest"]["properties"]
    models = [m["id"] for m in server.client.get("/v1/models").json()["data"]]
    assert request["model"]["enum"] == models
    assert "enum" not in request["voice"] and "/v1/voices" in request["voice"]["description"]  # voices are dynamic
    assert request["stream_format"]["enum"] == ["audio", "sse"] and request["speed"]["maximum"] == 1.0
    speech_op = doc["paths"]["/v1/audio/speech"]["post"]
    assert {"200", "400", "401", "413", "429", "500", "503", "504"} <= set(speech_op["responses"])
    assert "audio/mpeg" in speech_op["responses"]["200"]["content"]
    assert "text/event-stream" in speech_op["responses"]["200"]["content"]
    assert "Retry-After" in speech_op["responses"]["429"]["headers"]
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert (op.get("security") is None) == (path == "/health"), path


def test_non_finite_numbers_are_refused_with_a_message_about_them(server):
    body = json.dumps(speech()).replace('"max_audio_ms": 160', '"speed": NaN, "max_audio_ms": 160')
    r = server.client.post("/v1/audio/speech", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "speed"
    assert "finite" in r.json()["error"]["message"]


def test_the_smallest_accepted_temperature_still_speaks(server):
    r = server.client.post("/v1/audio/speech", json=speech(temperature=0.01))
    assert r.status_code == 200 and len(decode(r.content, "pcm")) == 2 * FRAME


def test_bodies_over_the_limit_are_refused_before_parsing(server):
    big = b'{"input": "' + b"a" * CONTEXT_BODY_BYTES + b'"}'  # a speech body may carry base64 context audio
    r = server.client.post("/v1/audio/speech", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():
        for _ in range(3):
            yield b"x" * (CONTEXT_BODY_BYTES // 2)

    r = server.client.post("/v1/audio/speech", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"


def test_sse_carries_the_same_audio_in_openai_speech_events(server):
    with server.client.stream("POST", "/v1/audio/speech", json=speech(320, "wav", stream_format="sse")) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "speech.audio.done" and set(kinds[:-1]) == {"speech.audio.delta"}
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(decode(audio, "wav")) == 4 * FRAME
    assert events[-1]["usage"] == {"input_tokens": 6, "output_tokens": 4, "total_tokens": 10}


def test_the_playground_page_is_public_and_locked_to_its_own_origin(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'src="static/playground.js"' in page.text and "https://" not in page.text  # relative, no CDN
    js = httpx.get(server.url + "/static/playground.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert 'api("v1/audio/speech")' in js.text and 'fetch("/' not in js.text
    assert httpx.get(server.url + "/static/../app.py").status_code == 401  # it is /app.py: not public
    assert server.client.get("/static/../app.py").status_code == 404
    assert httpx.get(server.url + "/static/secret.txt").status_code == 404


def test_a_4096_character_input_streams_every_sentence_in_one_response(server, monkeypatch):
    """Each piece capped at one frame (random weights never end a sentence themselves), so the whole text is said
    quickly: one frame per piece in one response means every piece was generated, in order, in one stream."""
    from csm_runtime.engine.sentences import speech_pieces

    monkeypatch.setattr(longtext, "PIECE_BASE_MS", 80)
    monkeypatch.setattr(longtext, "PIECE_MS_PER_CHAR", 0)
    sentence = "It was late, Mr. Holmes, and the fog, thick as wool and grey as ash, hid No. 221 from the street; "
    text = (sentence * 2).rstrip("; ") + "! " + "Did you see it, or did you only hear it? "
    text = (text * 30)[:4096]
    pieces = speech_pieces(text)
    with server.client.stream("POST", "/v1/audio/speech", json=speech(60_000, input=text)) as r:
        assert r.status_code == 200, r.read()
        audio = decode(r.read(), "pcm")
    assert len(text) == 4096 and len(pieces) > 20 and len(audio) == len(pieces) * FRAME
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
