"""`deploy voice add|list|rm` and `deploy generate --voice --conversation`: the real `deploy` console script against a
real runtime server (tiny-random, on CPU) that `deploy provision --provider local` started, reached by its rental ID
as an operator would. Bad input ends in one `Error:` line and exit 1, with the server's own message for a 4xx."""

from __future__ import annotations

import json
import os

import httpx
import numpy as np
import pytest
import soundfile as sf

from deploy.ledger import Ledger
from deploy.secrets.tokens import read_token_file
from tests.conftest import run_deploy

RATE = 24_000


def clip(path, seconds: float, freq: float = 220.0):
    t = np.arange(int(seconds * RATE)) / RATE
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), RATE, subtype="PCM_16")
    return path


class Rental:
    def __init__(self, home, env, rid: int):
        self.home, self.env, self.id = home, env, str(rid)
        with Ledger(home / "ledger.sqlite3") as ledger:
            server = ledger.get(rid).server
        self.url, self.token = server.endpoint, read_token_file(server.token_file)

    def deploy(self, *args: str, timeout: float = 120):
        return run_deploy(list(args), self.env, timeout=timeout)

    def api(self, method: str, path: str) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)


@pytest.fixture(scope="module")
def rental(tmp_path_factory):
    home = tmp_path_factory.mktemp("voice-cli") / "home"
    env = {**os.environ, "DEPLOY_HOME": str(home), "DEPLOY_POLL_INTERVAL_S": "0.2", "CSM_DEVICE": "cpu",
           "CSM_CPU_THREADS": "1", "DEPLOY_LOCAL_RATE": "0.1"}  # fmt: skip
    env.pop("VAST_API_KEY", None)
    try:
        res = run_deploy(["provision", "--provider", "local", "--model", "tiny-random", "--no-autotune", "--json"],
                         env, timeout=240)  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        yield Rental(home, env, json.loads(res.stdout)["id"])
    finally:
        run_deploy(["teardown", "--all", "--yes"], env)


def one_line_error(res, *needles: str) -> None:
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_add_list_speak_in_a_conversation_and_remove(rental, tmp_path):
    wav = clip(tmp_path / "maya.wav", 1.5)
    res = rental.deploy("voice", "add", rental.id, "maya", str(wav), "--transcript", "Hello there, I am Maya.",
                        "--description", "warm", "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    voice = json.loads(res.stdout)
    assert voice["id"] == "maya" and voice["source"] == "upload" and voice["speaker"] == 0
    assert voice["frames"] == 18  # 1.5 s at 24 kHz trimmed to whole 1920-sample frames, encoded once at upload

    res = rental.deploy("voice", "add", rental.id, "sam", str(clip(tmp_path / "sam.flac", 2.0)), "--transcript",
                        "And I am Sam.", "--speaker", "1")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("voice sam: ") and "speaker 1" in res.stdout

    res = rental.deploy("voice", "list", rental.id, "--json")
    assert res.returncode == 0, res.stderr
    listed = {v["id"]: v for v in json.loads(res.stdout)["voices"]}
    assert listed["maya"]["description"] == "warm" and listed["sam"]["speaker"] == 1
    table = rental.deploy("voice", "list", rental.id)
    assert table.returncode == 0 and "maya" in table.stdout and "Hello there, I am Maya." in table.stdout

    for text in ("Nice to meet you.", "How are you today?"):
        out = tmp_path / "turn.wav"
        res = rental.deploy("generate", rental.id, text, "--voice", "maya", "--conversation", "call-1",
                            "--max-audio-ms", "320", "-o", str(out), "--json")  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert sf.info(str(out)).frames > 0
    conversation = rental.api("GET", "/v1/conversations/call-1").json()
    assert [t["text"] for t in conversation["turns"]] == ["Nice to meet you.", "How are you today?"]
    assert {t["source"] for t in conversation["turns"]} == {"generated"}

    res = rental.deploy("voice", "rm", rental.id, "maya")
    assert res.returncode == 0 and res.stdout.strip() == "voice maya: deleted", res.stderr
    assert rental.api("GET", "/v1/voices/maya").status_code == 404
    one_line_error(rental.deploy("voice", "rm", rental.id, "maya"), "404")
    one_line_error(rental.deploy("generate", rental.id, "Hi.", "--voice", "maya", "-o", str(tmp_path / "x.wav")), "400")


def test_bad_input_is_one_line_and_exit_1(rental, tmp_path):
    ok = clip(tmp_path / "ok.wav", 1.2)
    one_line_error(rental.deploy("voice", "add", rental.id, "v", str(tmp_path / "none.wav"), "--transcript", "x"),
                   "no such file")  # fmt: skip
    one_line_error(rental.deploy("voice", "add", rental.id, "v", str(ok)), "--transcript")
    one_line_error(rental.deploy("voice", "add", rental.id, "../up", str(ok), "--transcript", "Hi."), "voice name")
    short = clip(tmp_path / "short.wav", 0.5)
    one_line_error(rental.deploy("voice", "add", rental.id, "v", str(short), "--transcript", "Hi."), "400", "0.5")
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n" * 100)
    one_line_error(rental.deploy("voice", "add", rental.id, "v", str(text), "--transcript", "Hi."), "400")
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (11 * 1024 * 1024))
    one_line_error(rental.deploy("voice", "add", rental.id, "v", str(big), "--transcript", "Hi."), "413")
    assert "v" not in {v["id"] for v in rental.api("GET", "/v1/voices").json()["voices"]}  # nothing left behind

    assert rental.deploy("voice", "add", rental.id, "dup", str(ok), "--transcript", "One.").returncode == 0
    one_line_error(rental.deploy("voice", "add", rental.id, "dup", str(ok), "--transcript", "Two."), "409")
    res = rental.deploy("voice", "add", rental.id, "dup", str(ok), "--transcript", "Two.", "--replace", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["transcript"] == "Two.", res.stderr

    one_line_error(rental.deploy("voice", "list", "999"), "no rental 999")
    one_line_error(rental.deploy("voice", "list"), "rental ID")
    one_line_error(rental.deploy("generate", rental.id, "Hi.", "--conversation", "a/b"), "--conversation")
