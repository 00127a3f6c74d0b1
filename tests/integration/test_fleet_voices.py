"""Voices and conversations in a real fleet: two tiny-random runtime servers from `deploy provision --provider local
--replicas 2`, the real HAProxy gateway in front (`deploy gateway start`), the real `deploy` CLI and the OpenAI client.

In file order: `deploy voice add --fleet` reaches every replica; a conversation's requests all land on one replica
(each replica's own /v1/conversations/{id} says which) while requests without one still spread; a replica added by
`deploy scale` has the fleet's voices before it joins the rotation; `voice rm --fleet`; a replica that cannot take
the fleet's voices never joins and its rental is ended.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from deploy.fleet.model import replica_token
from deploy.fleet.probe import probe
from deploy.fleet.voice_library import VoiceLibrary
from deploy.ledger import Ledger
from deploy.ledger.fleets import FleetStore
from tests.conftest import run_deploy
from tests.fakes.local_fleet import local_fleet

pytestmark = pytest.mark.usefixtures("haproxy")  # fails with the apt-get line when haproxy is missing
RATE = 24_000


class Fleet:
    def __init__(self, home, env, port: int):
        self.home, self.env = home, env
        self.url = f"http://127.0.0.1:{port}"
        self.token = (home / "tokens" / "gateway-default.token").read_text().strip()

    def deploy(self, *args: str, timeout: float = 240):
        return run_deploy(list(args), self.env, timeout=timeout)

    def replicas(self):
        with Ledger(self.home / "ledger.sqlite3") as ledger:
            store = FleetStore(ledger)
            return {r.name: r for r in store.replicas(store.get("default"), ("active",))}

    def direct(self, name: str, path: str) -> httpx.Response:
        """A replica's own server, with its own token: what it holds, not what the gateway shows."""
        r = self.replicas()[name]
        return httpx.get(r.endpoint + path, headers={"Authorization": f"Bearer {replica_token(r)}"}, timeout=30)

    def served(self) -> dict[str, int]:
        return {n: probe(r.endpoint, replica_token(r)).requests for n, r in self.replicas().items()}

    def speak(self, text: str, **extra) -> int:
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=self.token, max_retries=0, timeout=120)
        with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice=extra.pop("voice", "echo"), input=text, response_format="pcm",
            extra_body={"max_audio_ms": 160, **extra},
        ) as r:  # fmt: skip
            return len(r.read())

    def gateway(self, method: str, path: str, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kw)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with local_fleet(tmp_path_factory.mktemp("fleet-voices") / "home", 2) as made:
        yield Fleet(made.home, made.env, made.port)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "maya.wav"
    t = np.arange(int(1.5 * RATE)) / RATE
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), RATE, subtype="PCM_16")
    return path


def test_voice_add_fleet_reaches_every_replica_and_the_library(fleet, clip):
    res = fleet.deploy("voice", "add", "--fleet", "default", "maya", str(clip), "--transcript", "Hello, I am Maya.",
                       "--speaker", "1", "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert sorted(out["added_to"]) == ["r1", "r2"] and out["failed"] == {}
    for name in ("r1", "r2"):
        voice = fleet.direct(name, "/v1/voices/maya").json()
        assert voice["source"] == "upload" and voice["speaker"] == 1 and voice["transcript"] == "Hello, I am Maya."
    folder = fleet.home / "fleets" / "default" / "voices" / "maya"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {"clip.wav": 0o600, "voice.json": 0o600}
    assert (folder / "clip.wav").read_bytes() == clip.read_bytes()

    res = fleet.deploy("voice", "list", "--fleet", "default", "--json")
    assert res.returncode == 0, res.stderr
    (listed,) = json.loads(res.stdout)["voices"]
    assert listed["name"] == "maya" and listed["on_replicas"] == ["r1", "r2"] and listed["missing_on"] == []
    assert fleet.speak("Through the gateway.", voice="maya") == 160 * 48

    res = fleet.deploy("voice", "add", "--fleet", "default", "maya", str(clip), "--transcript", "Again.")
    assert res.returncode == 1 and "--replace" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_a_refusing_replica_is_named_and_a_clip_no_replica_takes_is_not_recorded(fleet, clip, tmp_path):
    assert fleet.deploy("voice", "add", "1", "solo", str(clip), "--transcript", "Only here.").returncode == 0
    res = fleet.deploy("voice", "add", "--fleet", "default", "solo", str(clip), "--transcript", "Everywhere.")
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error: ")]  # after a progress line per replica
    assert res.returncode == 1 and len(errors) == 1 and res.stderr.strip().endswith(errors[0]), res.stderr
    assert "is on r2" in res.stderr and "r1: server answered 409" in res.stderr and "--replace" in res.stderr
    assert VoiceLibrary(fleet.home, "default").get("solo").transcript == "Everywhere."  # r3 and later get it
    res = fleet.deploy("voice", "add", "--fleet", "default", "solo", str(clip), "--transcript", "Everywhere.",
                       "--replace", "--json")  # fmt: skip
    assert res.returncode == 0 and sorted(json.loads(res.stdout)["added_to"]) == ["r1", "r2"], res.stderr
    assert fleet.direct("r1", "/v1/voices/solo").json()["transcript"] == "Everywhere."

    t = np.arange(int(0.5 * RATE)) / RATE
    sf.write(str(tmp_path / "short.wav"), (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), RATE)
    res = fleet.deploy(
        "voice", "add", "--fleet", "default", "short", str(tmp_path / "short.wav"), "--transcript", "Hi."
    )
    assert res.returncode == 1 and "server answered 400" in res.stderr and "0.5" in res.stderr, res.stderr
    assert VoiceLibrary(fleet.home, "default").find("short") is None


def test_one_conversation_stays_on_one_replica_and_the_rest_still_spread(fleet):
    ids = [f"talk-{i}" for i in range(6)]

    def talk(cid: str) -> list[int]:  # the conversations at once: without stickiness leastconn would split each
        return [fleet.speak(f"Turn {turn} of {cid}.", voice="maya", conversation=cid) for turn in range(3)]

    with ThreadPoolExecutor(len(ids)) as pool:
        assert all(sizes == [160 * 48] * 3 for sizes in pool.map(talk, ids))
    added = fleet.gateway("POST", f"/v1/conversations/{ids[0]}/turns", json={"speaker": 0, "text": "I see."})
    assert added.status_code == 201, added.text
    holders = {}
    for cid in ids:
        found = {n: fleet.direct(n, f"/v1/conversations/{cid}") for n in ("r1", "r2")}
        having = [n for n, r in found.items() if r.status_code == 200]
        assert len(having) == 1, {n: r.status_code for n, r in found.items()}  # every turn on one replica
        holders[cid] = having[0]
        turns = found[having[0]].json()["turns"]
        assert len(turns) == (4 if cid == ids[0] else 3)
    assert set(holders.values()) == {"r1", "r2"}, holders  # hashed: conversations spread, each one stays
    for _ in range(4):  # the conversation's path is sticky too: through the gateway it is always found
        assert fleet.gateway("GET", f"/v1/conversations/{ids[0]}").status_code == 200

    before = fleet.served()
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda i: fleet.speak(f"No conversation {i}."), range(8))) == {160 * 48}
    delta = {n: fleet.served()[n] - before[n] for n in before}
    assert sum(delta.values()) == 8 and all(v > 0 for v in delta.values()), delta


def test_a_replica_added_later_has_the_voices_before_it_takes_traffic(fleet):
    res = fleet.deploy("scale", "3", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["added"] == ["r3"]
    assert fleet.direct("r3", "/v1/voices/maya").json()["speaker"] == 1
    with Ledger(fleet.home / "ledger.sqlite3") as ledger:
        kinds = [e["kind"] for e in ledger.events(3)]
    # pushed before it joined the fleet, so before the gateway's reload put it into the rotation
    assert kinds.index("voices") < kinds.index("replica"), kinds
    res = fleet.deploy("voice", "list", "--fleet", "default", "--json")
    assert {v["name"]: v["on_replicas"] for v in json.loads(res.stdout)["voices"]} == {
        "maya": ["r1", "r2", "r3"], "solo": ["r1", "r2", "r3"]}  # fmt: skip


def test_voice_rm_fleet_deletes_everywhere(fleet):
    res = fleet.deploy("voice", "rm", "--fleet", "default", "maya", "--json")
    assert res.returncode == 0, res.stderr
    assert sorted(json.loads(res.stdout)["deleted_from"]) == ["r1", "r2", "r3"]
    assert all(fleet.direct(n, "/v1/voices/maya").status_code == 404 for n in ("r1", "r2", "r3"))
    assert not (fleet.home / "fleets" / "default" / "voices" / "maya").exists()
    res = fleet.deploy("voice", "rm", "--fleet", "default", "maya")
    assert res.returncode == 1 and "no voice 'maya'" in res.stderr


def test_a_replica_that_cannot_take_the_fleets_voices_never_joins(fleet, tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF but not really a wave file" * 20)
    VoiceLibrary(fleet.home, "default").put("broken", junk, transcript="Nothing.", speaker=0, description="")
    res = fleet.deploy("scale", "4")
    assert res.returncode == 1, res.stdout
    assert "could not take the fleet's voice 'broken'" in res.stderr and "rental ended" in res.stderr
    assert sorted(fleet.replicas()) == ["r1", "r2", "r3"]
    with Ledger(fleet.home / "ledger.sqlite3") as ledger:
        assert not ledger.get(4).is_open  # nothing left billing
        assert "replica" not in [e["kind"] for e in ledger.events(4)]  # it never joined the fleet
    status = json.loads(fleet.deploy("gateway", "status", "--json").stdout)
    assert sorted(status["servers"]) == ["r1", "r2", "r3"]
