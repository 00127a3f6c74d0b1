"""Per-request context and conversations against a real server (uvicorn, the real tiny-random generator on CPU).

Two spies sit on the real generator (they change nothing): one counts its Mimi `codec.encode` calls, the other
records the context segments of each prompt `PromptBuilder.rows` builds, so the tests see what the model was given.
The idle TTL is observed by moving the conversation store's clock forward instead of waiting half an hour, and a
stream is cut by the request timeout made short for that one request, with the step after its first chunk stalled.
"""

from __future__ import annotations

import base64
import io
import re
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from csm_runtime.server import create_app
from csm_runtime.server.app import default_loader
from csm_runtime.settings import RuntimeSettings
from tests.fakes.server_fixtures import ServerThread, wait_ready

TOKEN = "conversations-test-token-0123456789"
FRAME = 1920
CUT_TIMEOUT_S = 1.0  # the request timeout while the cut test runs (a busy machine needs more for the others)
TRANSCRIPT = "A reference clip."


def wav_b64(freq: float, seconds: float = 1.0, rate: int = 16_000) -> str:
    """A sine clip as a base64 WAV (16 kHz: the server resamples it to 24 kHz, 12 whole frames for 1 s)."""
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


class Spies:
    """Counts the generator's Mimi encodes, records each prompt's context, and can stall one step (a timeout)."""

    def __init__(self, gen) -> None:
        self.encodes = 0
        self.prompts: list[tuple[str, list]] = []
        self.stall_after: int | None = None
        encode, rows, step = gen.codec.encode, gen.prompt.rows, gen.step

        def counted_encode(wav):
            self.encodes += 1
            return encode(wav)

        def recorded_rows(text, speaker, context):
            self.prompts.append((text, list(context)))
            return rows(text, speaker, context)

        def stalling_step():
            if self.stall_after == 0:
                self.stall_after = None
                time.sleep(CUT_TIMEOUT_S + 0.5)
            elif self.stall_after is not None:
                self.stall_after -= 1
            return step()

        gen.codec.encode, gen.prompt.rows, gen.step = counted_encode, recorded_rows, stalling_step

    def context_of(self, text: str) -> list:
        """The context segments of the last prompt built for `text`."""
        return [ctx for t, ctx in self.prompts if t == text][-1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conversations")
    (tmp / "token").write_text(TOKEN)
    (tmp / "voices").mkdir()
    (tmp / "voices" / "ref.wav").write_bytes(base64.b64decode(wav_b64(330)))
    (tmp / "voices" / "ref.yaml").write_text(
        f'voices:\n  ref: {{speaker: 1, audio: ref.wav, transcript: "{TRANSCRIPT}"}}\n'
    )
    settings = RuntimeSettings(model="tiny-random", device="cpu", dtype="float32", cpu_threads=1, max_streams=2,
                               max_audio_ms=8000, max_seq_len=256, max_context_frames=40, first_chunk_frames=1,
                               chunk_frames=1, max_conversations=3,
                               voices_dir=str(tmp / "voices"), voice_store_dir=str(tmp / "store"),
                               token_file=str(tmp / "token"))  # fmt: skip
    load_real, spies = default_loader(settings), []

    def load():
        gen = load_real()
        spies.append(Spies(gen))
        return gen

    app = create_app(settings, loader=load)
    offset = [0.0]
    app.state.conversations.clock = lambda: time.monotonic() + offset[0]
    with ServerThread(app) as srv:
        srv.client = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        wait_ready(srv.client)
        srv.spies, srv.app, srv.clock_offset = spies[0], app, offset
        yield srv
        srv.client.close()


def speech(text: str = "Hello there.", **kw) -> dict:
    return {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm", "max_audio_ms": 400, **kw}


def say(server, text: str = "Hello there.", **kw) -> bytes:
    r = server.client.post("/v1/audio/speech", json=speech(text, **kw))
    assert r.status_code == 200, r.text
    return r.content


def metric(server, name: str, labels: str = "") -> float:
    text = server.client.get("/metrics").text
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} not in /metrics"
    return float(m.group(1))


def described(segments) -> list[tuple[str, int, int]]:
    return [(s.text, s.speaker, 0 if s.codes is None else s.codes.shape[1]) for s in segments]


def test_context_items_with_audio_a_voice_or_text_only_are_the_prompt_after_the_voice(server):
    spies = server.spies
    before = spies.encodes
    context = [
        {"speaker": 0, "text": "Text only,\u200b first. ", "audio": None},  # cleaned as `input` is
        {"speaker": 0, "text": "Any words.", "voice": "ref"},
        {"speaker": 1, "text": "A clip of mine.", "audio": wav_b64(440)},
    ]
    say(server, "Context test.", voice="ref", context=context)
    assert spies.encodes == before + 1  # the client's clip, once; the voices' stored codes are used as they are
    prompt = spies.context_of("Context test.")
    assert described(prompt) == [
        (TRANSCRIPT, 1, 12),  # the request's voice first
        ("Text only, first.", 0, 0),
        (TRANSCRIPT, 0, 12),  # the voice item: its clip and transcript, as the item's speaker
        ("A clip of mine.", 1, 12),
    ]
    assert prompt[2].codes is server.app.state.voices["ref"].context[0].codes  # the stored codes themselves


def test_the_oldest_context_is_dropped_beyond_the_budget_and_only_kept_clips_are_encoded(server):
    spies = server.spies
    clips = [{"speaker": 0, "text": f"Clip {name}.", "audio": wav_b64(f)} for name, f in (("A", 220), ("B", 440))]
    clips.append({"speaker": 1, "text": "Clip C.", "audio": wav_b64(660)})
    before = spies.encodes
    # 40 frames: the voice's 12 + 1, then two of the 12 + 1 frame clips; A, the oldest, does not fit
    full = say(server, "Budget test.", voice="ref", seed=3, context=clips)
    assert spies.encodes == before + 2  # A is dropped before it is encoded
    assert [s.text for s in spies.context_of("Budget test.")] == [TRANSCRIPT, "Clip B.", "Clip C."]
    assert say(server, "Budget test.", voice="ref", seed=3, context=clips[1:]) == full  # same prompt, same audio
    assert say(server, "Budget test.", voice="ref", seed=3, context=clips[2:]) != full  # B was heard


def test_a_request_that_alone_does_not_fit_is_a_400_before_any_stream(server):
    r = server.client.post("/v1/audio/speech", json=speech("word " * 55, voice="ref"))  # 275 rows > 256
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_too_long" and err["param"] == "input" and "256" in err["message"]


@pytest.mark.parametrize(
    ("item", "param", "code"),
    [
        ({"speaker": 0, "text": "x", "voice": "nobody"}, "context.0.voice", "voice_not_found"),
        ({"speaker": 0, "text": "x", "audio": base64.b64encode(b"not audio").decode()}, "context.0.audio",
         "invalid_audio"),
        ({"speaker": 0, "text": "x", "audio": "%%%"}, "context.0.audio", "invalid_audio"),
        ({"speaker": 0, "text": "x", "voice": "ref", "audio": None}, "context.0", "invalid_value"),
        ({"speaker": -1, "text": "x"}, "context.0.speaker", "invalid_value"),
    ],
)  # fmt: skip
def test_a_bad_context_item_is_a_400_naming_it(server, item, param, code):
    r = server.client.post("/v1/audio/speech", json=speech(context=[item]))
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code)


def test_a_conversation_keeps_its_generated_turns_and_the_next_request_hears_their_codes(server):
    spies = server.spies
    pcm = say(server, "First turn.", voice="ref", conversation="talk-1")
    conv = server.client.get("/v1/conversations/talk-1").json()
    assert conv["object"] == "conversation" and conv["id"] == "talk-1"
    assert [(t["text"], t["speaker"], t["source"]) for t in conv["turns"]] == [("First turn.", 1, "generated")]
    assert conv["turns"][0]["frames"] == len(pcm) // 2 // FRAME == conv["frames"] == 5
    assert conv["expires_at"] > time.time() + 1700
    before = spies.encodes
    say(server, "Second turn.", voice="ref", conversation="talk-1")
    assert spies.encodes == before  # the first turn's codes are used as stored: nothing encoded again
    prompt = spies.context_of("Second turn.")
    assert described(prompt) == [(TRANSCRIPT, 1, 12), ("First turn.", 1, 5)]
    assert prompt[1].codes is server.app.state.conversations.get("talk-1").turns[0].codes
    turns = server.client.get("/v1/conversations/talk-1").json()["turns"]
    assert [t["text"] for t in turns] == ["First turn.", "Second turn."]
    # long text: its pieces are one turn; a whole body (stream: false) completes a turn too
    say(server, "Third one. It has two sentences.", conversation="talk-1", stream=False, max_audio_ms=8000)
    last = server.client.get("/v1/conversations/talk-1").json()["turns"][-1]
    assert last["text"] == "Third one. It has two sentences." and last["speaker"] == 0
    # the audio cap ends it in the first sentence: the turn says only what was started, not the sentence never said
    say(server, "Fourth one. Never reached.", conversation="talk-1", max_audio_ms=80)
    last = server.client.get("/v1/conversations/talk-1").json()["turns"][-1]
    assert (last["text"], last["frames"]) == ("Fourth one.", 1)


def test_an_added_turn_is_encoded_once_and_becomes_context(server):
    spies = server.spies
    before = spies.encodes
    r = server.client.post("/v1/conversations/talk-2/turns", json={"speaker": 0, "text": "Hi.", "audio": wav_b64(500)})
    assert r.status_code == 201, r.text
    assert r.json()["turns"] == [{**r.json()["turns"][0], "speaker": 0, "text": "Hi.", "frames": 12, "source": "added"}]
    r = server.client.post("/v1/conversations/talk-2/turns", json={"speaker": 0, "text": "And text only."})
    assert r.status_code == 201 and r.json()["turns"][1]["frames"] == 0 and r.json()["frames"] == 12
    assert spies.encodes == before + 1
    say(server, "Replying.", voice="echo", conversation="talk-2")
    assert spies.encodes == before + 1
    assert described(spies.context_of("Replying.")) == [("Hi.", 0, 12), ("And text only.", 0, 0)]
    bad = server.client.post("/v1/conversations/talk-2/turns", json={"speaker": 0, "text": "x", "audio": "AAAA"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_audio"
    assert server.client.post("/v1/conversations/./turns", json={"speaker": 0, "text": "x"}).status_code in (
        400,
        404,
        405,
    )


def test_a_conversation_expires_when_idle_past_the_ttl(server):
    say(server, "Soon gone.", conversation="talk-ttl")
    assert server.client.get("/v1/conversations/talk-ttl").status_code == 200
    expired = metric(server, "csm_conversations_evicted_total", '{reason="ttl"}')
    assert metric(server, "csm_conversations_limit", '{kind="ttl_seconds"}') == 1800
    server.clock_offset[0] += 1801
    assert metric(server, "csm_conversations_evicted_total", '{reason="ttl"}') >= expired + 1
    assert metric(server, "csm_conversations") == 0 and metric(server, "csm_conversations_bytes") == 0
    r = server.client.get("/v1/conversations/talk-ttl")
    assert r.status_code == 404 and r.json()["error"]["code"] == "conversation_not_found"


def test_beyond_the_number_limit_the_least_recently_used_conversation_goes(server):
    assert metric(server, "csm_conversations_limit", '{kind="count"}') == 3
    for cid in ("lru-1", "lru-2", "lru-3"):
        say(server, "Hello.", conversation=cid)
    evicted = metric(server, "csm_conversations_evicted_total", '{reason="count"}')
    say(server, "Again.", conversation="lru-1")  # lru-2 is now the least recently used
    say(server, "Hello.", conversation="lru-4")
    status = {cid: server.client.get(f"/v1/conversations/{cid}").status_code for cid in ("lru-1", "lru-2", "lru-3")}
    assert status == {"lru-1": 200, "lru-2": 404, "lru-3": 200}
    assert metric(server, "csm_conversations_evicted_total", '{reason="count"}') == evicted + 1
    assert metric(server, "csm_conversations") == 3 and metric(server, "csm_conversations_bytes") > 0


def test_delete_forgets_a_conversation(server):
    say(server, "To delete.", conversation="talk-del")
    r = server.client.delete("/v1/conversations/talk-del")
    assert r.status_code == 200 and r.json() == {"id": "talk-del", "object": "conversation.deleted", "deleted": True}
    assert server.client.get("/v1/conversations/talk-del").status_code == 404
    assert server.client.delete("/v1/conversations/talk-del").status_code == 404
    assert server.client.get("/v1/conversations/bad%2Fid").status_code in (400, 404)


def wait_idle(server) -> None:
    deadline = time.monotonic() + 30
    while server.app.state.scheduler.snapshot()["active"] and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_cancelled_or_cut_stream_adds_no_turn(server):
    body = speech("Never finished.", conversation="talk-cut", max_audio_ms=8000)
    with server.client.stream("POST", "/v1/audio/speech", json=body) as r:
        assert r.status_code == 200
        chunks = r.iter_raw()  # keep the iterator: the response closes (a disconnect) when the block ends
        assert next(chunks)
    wait_idle(server)
    assert server.client.get("/v1/conversations/talk-cut").status_code == 404
    scheduler = server.app.state.scheduler
    timeout_s, scheduler.request_timeout_s = scheduler.request_timeout_s, CUT_TIMEOUT_S
    server.spies.stall_after = 2  # the step after the first chunk outlasts the request timeout: the stream is cut
    try:
        with server.client.stream("POST", "/v1/audio/speech", json={**body, "stream_format": "sse"}) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
    finally:
        scheduler.request_timeout_s = timeout_s
    # cut after its first audio (a machine too busy to make the first chunk in time gets a 504 instead)
    assert '"type":"error"' in events[-1] if r.status_code == 200 else r.status_code == 504
    wait_idle(server)
    assert server.client.get("/v1/conversations/talk-cut").status_code == 404
