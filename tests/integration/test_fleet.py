"""A real fleet on this machine: three tiny-random runtime servers provisioned by `deploy provision --provider local
--replicas 3` (in parallel), the real HAProxy in front (`deploy gateway start`), the real OpenAI client as the user.

The tests share one fleet (provisioning costs ~20 s on two cores) and run in file order: spread, no buffering, a
replica that is still warming, a replica killed and healed, then `deploy scale 1` with streams in flight.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from deploy.fleet.model import replica_token
from deploy.fleet.probe import probe
from deploy.gateway.files import Paths
from deploy.gateway.runtime_api import ServerStat, server_stats
from deploy.ledger import Ledger
from deploy.ledger.fleets import FleetStore
from tests.conftest import DEPLOY_BIN, run_deploy
from tests.fakes.local_fleet import local_fleet
from tests.fakes.server_fixtures import free_port

pytestmark = pytest.mark.usefixtures("haproxy")  # fails with the apt-get line when haproxy is missing
PCM_BYTES_PER_MS = 48  # 24 kHz, 16-bit mono


class Fleet:
    def __init__(self, home: Path, env: dict, port: int):
        self.home, self.env, self.port = home, env, port
        self.url = f"http://127.0.0.1:{port}"
        self.token = (home / "tokens" / "gateway-default.token").read_text().strip()

    def deploy(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return run_deploy(list(args), self.env, timeout=timeout)

    def replicas(self):
        with Ledger(self.home / "ledger.sqlite3") as ledger:
            store = FleetStore(ledger)
            return store.replicas(store.get("default"), ("active",))

    def served(self) -> dict[str, int]:
        """Speech requests each active replica answered, from its own /metrics."""
        return {r.name: probe(r.endpoint, replica_token(r)).requests for r in self.replicas()}

    def stats(self) -> dict[str, ServerStat]:
        return server_stats(Paths.for_fleet(self.home, "default"))

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.token, max_retries=0, timeout=120)

    def speak(self, text: str, ms: int = 400) -> int:
        with self.client().audio.speech.with_streaming_response.create(
            model="tts-1", voice="echo", input=text, response_format="pcm", extra_body={"max_audio_ms": ms}
        ) as r:
            return len(r.read())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with local_fleet(tmp_path_factory.mktemp("fleet") / "home", 3, check_interval="0.5", gateway_json=True) as made:
        out = made.provisioned
        assert sorted(r["replica"] for r in out["replicas"]) == ["r1", "r2", "r3"] and out["failures"] == []
        info = json.loads(made.gateway)
        assert info["running"] and sorted(info["servers"]) == ["r1", "r2", "r3"]
        assert all(s["status"] == "UP" for s in info["servers"].values())
        yield Fleet(made.home, made.env, made.port)


def test_twelve_concurrent_requests_spread_over_three_replicas(fleet):
    before = fleet.served()
    with ThreadPoolExecutor(12) as pool:
        sizes = list(pool.map(lambda i: fleet.speak(f"Request number {i}."), range(12)))
    assert sizes == [400 * PCM_BYTES_PER_MS] * 12
    after = fleet.served()
    delta = {name: after[name] - before[name] for name in after}
    assert sum(delta.values()) == 12 and all(n > 0 for n in delta.values()), delta

    # the client-facing token is checked at the gateway; /health is public; the config holding tokens is private
    bad = openai.OpenAI(base_url=fleet.url + "/v1", api_key="wrong-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.audio.speech.create(model="tts-1", voice="echo", input="Hi.")
    assert httpx.get(fleet.url + "/v1/audio/speech").status_code == 401
    assert httpx.get(fleet.url + "/health").status_code == 200
    replica_token_ = replica_token(fleet.replicas()[0])
    r = httpx.get(fleet.url + "/ready", headers={"Authorization": f"Bearer {replica_token_}"})
    assert r.status_code == 401  # a replica's own token does not open the gateway
    cfg = fleet.home / "gateway" / "default" / "haproxy.cfg"
    assert cfg.stat().st_mode & 0o777 == 0o600
    status = fleet.deploy("gateway", "status")
    assert status.returncode == 0 and fleet.token not in status.stdout + status.stderr
    assert replica_token_ not in status.stdout + status.stderr


def test_status_and_cost_show_the_fleet(fleet):
    served = fleet.served()
    res = fleet.deploy("status", "--json")
    assert res.returncode == 0, res.stderr
    replicas = {e["replica"]["replica"]: e["replica"] for e in json.loads(res.stdout) if "replica" in e}
    assert sorted(replicas) == sorted(served)
    for name, r in replicas.items():
        assert r["fleet"] == "default" and r["ready"] and r["gateway"] == "UP"
        assert r["requests"] >= served[name] > 0  # from the replica's own /metrics
    text = " ".join(fleet.deploy("status").stdout.split())  # the table's caption wraps
    assert "fleet default" in text and "3/3 ready" in text
    res = fleet.deploy("cost", "--json")
    assert res.returncode == 0, res.stderr
    (f,) = json.loads(res.stdout)["fleets"]
    assert f["replicas"] == 3 and f["rate_usd_h"] == 1.5 and f["audio_seconds"] > 0
    assert f["usd_per_audio_h"] == pytest.approx(f["usd"] / (f["audio_seconds"] / 3600), rel=1e-6)
    assert "per hour of audio" in " ".join(fleet.deploy("cost").stdout.split())


def test_streamed_bytes_arrive_while_the_replica_is_still_generating(fleet):
    """No buffering at the gateway: the first chunk is here while the replica still reports the stream running."""
    headers = {"Authorization": f"Bearer {fleet.token}"}
    body = {"model": "tts-1", "voice": "echo", "input": "A long one.", "response_format": "pcm", "max_audio_ms": 6000}
    with httpx.stream("POST", fleet.url + "/v1/audio/speech", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200
        chunks = r.iter_bytes()
        first = next(chunks)
        assert 0 < len(first) < 6000 * PCM_BYTES_PER_MS
        running = {x.name: probe(x.endpoint, replica_token(x)).metrics["active_streams"] for x in fleet.replicas()}
        assert sum(running.values()) >= 1, running
        total = len(first) + sum(len(c) for c in chunks)
    assert total == 6000 * PCM_BYTES_PER_MS


def test_a_warming_replica_gets_no_traffic_until_ready(fleet, tmp_path):
    """A real runtime app whose model load waits for a gate file (tests/fakes/gated_replica.py): /ready is 503 until the
    test opens the gate. It joins the fleet in the ledger, the gateway reloads, and it must get nothing until ready."""
    token_file, gate = fleet.home / "tokens" / "warming.token", tmp_path / "gate"
    token = "warming-replica-token-0123456789"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.gated_replica", str(port), str(token_file), str(gate)],
                            cwd=Path(__file__).parents[2], env=fleet.env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not probe(url, token).detail.startswith("/ready 503"):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        with Ledger(fleet.home / "ledger.sqlite3") as ledger:
            rental = ledger.record_intent(attempt_id="warm", provider="local", label_prefix="csm-deploy")
            ledger.record_rented(rental.id, "gated-process")
            ledger.update_meta(rental.id, endpoint=url, access="direct", token_file=str(token_file))
            store = FleetStore(ledger)
            name = store.add(store.get("default"), rental.id).name
        res = fleet.deploy("gateway", "reload", "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["servers"][name]["status"] == "DOWN"  # checked once before reload returned
        with ThreadPoolExecutor(6) as pool:
            assert all(pool.map(lambda i: fleet.speak(f"Warm {i}."), range(6)))
        metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}).text
        assert 'route="/v1/audio/speech"' not in metrics  # not one request reached it, not even one answered 503

        gate.touch()
        deadline = time.monotonic() + 60
        while not fleet.stats()[name].up:
            assert time.monotonic() < deadline, fleet.stats()[name]
            time.sleep(0.2)
        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(lambda i: fleet.speak(f"Now {i}."), range(8)))
        assert probe(url, token).requests > 0
    finally:
        with Ledger(fleet.home / "ledger.sqlite3") as ledger:
            if ledger.get(rental.id).is_open:
                ledger.close_rental(rental.id, "released", "test replica leaves")
        assert fleet.deploy("gateway", "reload").returncode == 0
        proc.terminate()
        proc.wait(30)
    assert name not in fleet.stats()


def test_sigterm_stops_heal_while_it_watches_and_its_last_line_says_what_was_left(fleet, tmp_path):
    """`deploy heal` watching a replica whose /ready fails (a gated replica that never opens): SIGTERM ends it at its
    next poll with 143 and a last line that says nothing was changed, and the replica stays in the fleet."""
    token_file, gate = fleet.home / "tokens" / "watched.token", tmp_path / "gate"
    token_file.write_text("watched-replica-token-0123456789\n")
    token_file.chmod(0o600)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.gated_replica", str(port), str(token_file), str(gate)],
                            cwd=Path(__file__).parents[2], env=fleet.env)  # fmt: skip
    (fleet.home / "local" / "watched-box").mkdir(parents=True)  # the local provider's record of a running box
    try:
        with Ledger(fleet.home / "ledger.sqlite3") as ledger:
            rental = ledger.record_intent(attempt_id="watched", provider="local", label_prefix="csm-deploy")
            ledger.record_rented(rental.id, "watched-box")
            ledger.update_meta(
                rental.id, endpoint=f"http://127.0.0.1:{port}", access="direct", token_file=str(token_file)
            )
            store = FleetStore(ledger)
            name = store.add(store.get("default"), rental.id).name
        heal = subprocess.Popen([str(DEPLOY_BIN), "heal", "--after", "600", "--replica", name, "--no-replace"],
                                env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while True:  # watching: its /ready failure is on record, and heal polls again
            with Ledger(fleet.home / "ledger.sqlite3") as ledger:
                if FleetStore(ledger).replica(FleetStore(ledger).get("default"), name).failing_since is not None:
                    break
            assert heal.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        heal.send_signal(signal.SIGTERM)
        _, err = heal.communicate(timeout=30)
        assert heal.returncode == 143, err[-2000:]
        assert err.strip().splitlines()[-1] == (
            f"interrupted (SIGTERM): heal stopped while watching {name}; nothing was changed"
        ), err[-2000:]
        with Ledger(fleet.home / "ledger.sqlite3") as ledger:
            store = FleetStore(ledger)
            assert store.replica(store.get("default"), name).state == "active" and ledger.get(rental.id).is_open
    finally:
        with Ledger(fleet.home / "ledger.sqlite3") as ledger:
            if ledger.get(rental.id).is_open:
                ledger.close_rental(rental.id, "released", "test replica leaves")
        assert fleet.deploy("gateway", "reload").returncode == 0
        proc.kill()  # its model load waits on the gate, which never opens
        proc.wait(30)


def test_killed_replica_new_requests_succeed_and_heal_replaces_it(fleet):
    victim = fleet.replicas()[0]
    os.killpg(int(victim.rental.meta["server_pid"]), signal.SIGKILL)
    with ThreadPoolExecutor(6) as pool:  # at once: retried on the others until the checks take it out
        assert list(pool.map(lambda i: fleet.speak(f"After the kill {i}."), range(6))) == [400 * PCM_BYTES_PER_MS] * 6

    res = fleet.deploy("heal", "--after", "1", "--json", timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["replaced"] == [victim.name] and len(out["added"]) == 1, out
    names = sorted(r.name for r in fleet.replicas())
    assert victim.name not in names and out["added"][0] in names and len(names) == 3
    stats = fleet.stats()
    assert sorted(stats) == names and all(s.up for s in stats.values()), stats
    with Ledger(fleet.home / "ledger.sqlite3") as ledger:
        assert ledger.get(victim.rental.id).status == "destroyed"
        assert [e["kind"] for e in ledger.events(victim.rental.id)][-1] == "replica:removed"
    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(lambda i: fleet.speak(f"Healed {i}."), range(6)))


def test_scale_to_one_drains_without_cutting_streams(fleet):
    ms = 3200  # a whole number of 80 ms frames
    with ThreadPoolExecutor(3) as pool:
        streams = [pool.submit(fleet.speak, f"Long stream {i}.", ms) for i in range(3)]
        deadline = time.monotonic() + 30  # leastconn: one stream on each replica
        while not all(s.current >= 1 for s in fleet.stats().values()):
            assert time.monotonic() < deadline and not any(s.done() for s in streams), fleet.stats()
            time.sleep(0.02)
        before = fleet.replicas()
        res = fleet.deploy("scale", "1", "--json")
        sizes = [s.result() for s in streams]
    assert res.returncode == 0, res.stderr[-3000:]
    assert sizes == [ms * PCM_BYTES_PER_MS] * 3  # every stream whole, on removed replicas too
    out = json.loads(res.stdout)
    assert len(out["removed"]) == 2 and len(out["active"]) == 1
    assert re.search(r"draining r\d+: 1 open at the gateway", res.stderr), res.stderr  # it did wait for them
    assert sorted(fleet.stats()) == out["active"]
    with Ledger(fleet.home / "ledger.sqlite3") as ledger:
        for r in before:
            if r.name in out["removed"]:
                assert ledger.get(r.rental.id).status == "destroyed"
    assert fleet.speak("Still here.") == 400 * PCM_BYTES_PER_MS
