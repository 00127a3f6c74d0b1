"""`deploy autoscale` against a real fleet on this machine: tiny-random runtime servers from `deploy provision
--provider local`, the real HAProxy gateway in front, a load trace of concurrent streaming requests through it.
Windows and intervals are shrunk to fractions of a second so the fleet follows the load within seconds.

The tests share one fleet and run in file order: bad input, the spend cap holding growth under load, then grow
under load and shrink (drained first) once it stops.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from deploy.ledger import Ledger
from deploy.ledger.fleets import FleetStore
from tests.conftest import DEPLOY_BIN, run_deploy
from tests.fakes.local_fleet import local_fleet

pytestmark = pytest.mark.usefixtures("haproxy")
PCM_BYTES_PER_MS = 48  # 24 kHz, 16-bit mono
FAST = ["--target-streams", "1", "--scale-up-after", "1s", "--scale-down-after", "2s", "--cooldown", "1s",
        "--interval", "0.3s", "--drain-timeout", "60s"]  # fmt: skip


class Fleet:
    def __init__(self, home: Path, env: dict, port: int):
        self.home, self.env = home, env
        self.url = f"http://127.0.0.1:{port}"
        self.token = (home / "tokens" / "gateway-default.token").read_text().strip()

    def active(self) -> list[str]:
        with Ledger(self.home / "ledger.sqlite3") as ledger:
            store = FleetStore(ledger)
            return [r.name for r in store.replicas(store.get("default"), ("active",))]

    def events(self, kind: str = "autoscale") -> list[str]:
        with sqlite3.connect(f"file:{self.home / 'ledger.sqlite3'}?mode=ro", uri=True, timeout=5) as db:
            return [row[0] for row in db.execute("SELECT detail FROM events WHERE kind=? ORDER BY id", (kind,))]

    def rental_events(self, name: str) -> list[str]:
        with Ledger(self.home / "ledger.sqlite3") as ledger:
            return [e["kind"] for e in ledger.events(int(name[1:]))]

    def speak(self, ms: int) -> int:
        body = {"model": "tts-1", "voice": "echo", "input": "Load.", "response_format": "pcm", "max_audio_ms": ms}
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.stream("POST", self.url + "/v1/audio/speech", json=body, headers=headers, timeout=120) as r:
            assert r.status_code == 200, r.read()
            return sum(len(c) for c in r.iter_bytes())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with local_fleet(tmp_path_factory.mktemp("autoscale") / "home", 1) as made:
        yield Fleet(made.home, made.env, made.port)


@contextmanager
def load(fleet: Fleet, streams: int, ms: int = 1600):
    """`streams` clients, each sending one streaming request after another through the gateway until the block
    ends; yields the list of byte counts they got (each must be whole)."""
    stop, sizes, errors = threading.Event(), [], []

    def client() -> None:
        while not stop.is_set():
            try:
                sizes.append(fleet.speak(ms))
            except Exception as exc:  # noqa: BLE001 - reported by the test
                errors.append(repr(exc))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(streams)]
    for t in threads:
        t.start()
    try:
        yield sizes
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert errors == [] and sizes and set(sizes) == {ms * PCM_BYTES_PER_MS}, (errors, set(sizes))


def start(fleet: Fleet, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(DEPLOY_BIN), "autoscale", *args, "--json"], env=fleet.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def wait_for(what, timeout: float, proc: subprocess.Popen, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if proc.poll() is not None:
            raise AssertionError(f"autoscale ended: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(step)


def stop(proc: subprocess.Popen) -> tuple[list[dict], str]:
    """SIGINT, as Ctrl-C: the loop ends at its next wait with 130 and says it changed nothing then."""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("interrupted (SIGINT): autoscale of fleet default stopped"), err
    return [json.loads(line) for line in out.splitlines()], err


def test_bad_input_is_one_line(fleet):
    for args, said in [
        (["--min", "3", "--max", "2"], "--max (2) is below --min (3)"),
        (["--min", "0"], "--min must be at least 1"),
        (["--target-streams", "0"], "--target-streams must be above 0"),
        (["--interval", "soon"], "--interval 'soon' is not a duration"),
        (["--max-usd-per-hour", "lots"], "--max-usd-per-hour 'lots' is not a number"),
        (["nofleet"], "no fleet 'nofleet'"),
    ]:
        res = run_deploy(["autoscale", *args, "--once"], fleet.env)
        assert res.returncode == 1 and res.stderr.count("\n") == 1 and said in res.stderr, (args, res.stderr)


def test_spend_cap_stops_growth_under_load(fleet):
    """One replica at 0.5 USD/h, a cap of 0.8: the load says grow, the cap says no, and the ledger says why."""
    proc = start(fleet, "--min", "1", "--max", "3", "--max-usd-per-hour", "0.8", *FAST)
    with load(fleet, 3):
        wait_for(lambda: any("spend cap" in e for e in fleet.events()), 60, proc)
        time.sleep(1.0)  # more checks under the same load: still no growth
    decisions, err = stop(proc)
    assert fleet.active() == ["r1"]
    assert [d["action"] for d in decisions if d["action"] != "hold"] == []
    blocked = [d for d in decisions if "spend cap blocks growth" in d["reason"]]
    assert blocked and "$0.500/h + $0.500/h > $0.8/h" in blocked[0]["reason"], err[-2000:]
    assert blocked[0]["observation"]["usd_per_h"] == 0.5
    assert "autoscale fleet default: hold" in err and "spend cap" in err  # the decision log


def test_grows_under_load_then_drains_and_shrinks_after_it(fleet):
    proc = start(fleet, "--min", "1", "--max", "2", *FAST)
    with load(fleet, 3) as sizes:
        wait_for(lambda: len(fleet.active()) == 2, 180, proc)  # added, ready and in the gateway
        served = len(sizes)
        wait_for(lambda: len(sizes) >= served + 6, 120, proc)  # requests keep flowing over both
        wait_for(lambda: any("already at --max 2" in e for e in fleet.events()), 60, proc)
    added = next(n for n in fleet.active() if n != "r1")
    wait_for(lambda: len(fleet.active()) == 1, 120, proc)  # no load: one goes, drained first
    decisions, err = stop(proc)

    changes = [(d["action"], d["count"]) for d in decisions if d["action"] != "hold"]
    assert changes == [("add", 1), ("remove", 1)], err[-3000:]
    add = next(d for d in decisions if d["action"] == "add")
    assert "/replica > target 1 for" in add["reason"] and add["added"] == [added]
    remove = next(d for d in decisions if d["action"] == "remove")
    assert "< 0.7 (70% of target)" in remove["reason"] and len(remove["removed"]) == 1
    for d in decisions:  # the fleet never left its bounds
        seen = d["observation"]["replicas"] + d["observation"]["pending"]
        assert 1 <= seen <= 2, d
    gone = remove["removed"][0]
    kinds = fleet.rental_events(gone)
    assert kinds.index("replica:draining") < kinds.index("replica:removed"), kinds
    with Ledger(fleet.home / "ledger.sqlite3") as ledger:
        assert ledger.get(int(gone[1:])).status == "destroyed"
    events = fleet.events()
    assert any(e.startswith("fleet default: add 1: ") and "> target 1" in e for e in events), events
    assert any(e.startswith("fleet default: remove 1: ") and "70% of target" in e for e in events), events
    assert "out of rotation, waiting for its streams to finish" in err
    assert fleet.speak(400) == 400 * PCM_BYTES_PER_MS  # the one left serves


def test_outbid_replica_leaves_while_streams_elsewhere_flow(fleet, monkeypatch):
    """Two replicas, a long stream on one; the other's box is reported outbid (vast's word, which a local box cannot
    say: the one stand-in here is the provider's answer for that box). One check (`handle_preempted`, in this
    process) records it, drains it at the gateway, destroys it and adds a replacement, and the stream in flight on
    the first replica arrives whole, as do requests sent meanwhile."""
    import dataclasses

    from deploy.fleet.preempt import handle_preempted
    from deploy.gateway.files import Paths
    from deploy.gateway.runtime_api import server_stats
    from deploy.providers.local import LocalProvider
    from deploy.providers.records import State
    from deploy.settings import load_settings

    res = run_deploy(["scale", "2"], fleet.env, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    stats = lambda: server_stats(Paths.for_fleet(fleet.home, "default"))  # noqa: E731
    ms = 8000
    with ThreadPoolExecutor(4) as pool:
        long = pool.submit(fleet.speak, ms)
        deadline = time.monotonic() + 30
        while not any(s.current for s in stats().values()):
            assert time.monotonic() < deadline and not long.done()
            time.sleep(0.02)
        busy = next(n for n, s in stats().items() if s.current)
        (victim,) = [n for n in fleet.active() if n != busy]
        with Ledger(fleet.home / "ledger.sqlite3") as ledger:
            victim_id = ledger.get(int(victim[1:])).provider_id
        real_get = LocalProvider.get

        def get(self, provider_id):
            box = real_get(self, provider_id)
            if box is None or provider_id != victim_id:
                return box
            return dataclasses.replace(box, state=State.STOPPED, raw_status="stopped", interruptible=True,
                                       preempted=True, detail="outbid")  # fmt: skip

        monkeypatch.setattr(LocalProvider, "get", get)
        for key in ("DEPLOY_HOME", "DEPLOY_POLL_INTERVAL_S", "CSM_DEVICE", "CSM_CPU_THREADS", "CSM_MAX_STREAMS"):
            monkeypatch.setenv(key, fleet.env[key])  # what the replacement's server inherits
        lines: list[str] = []
        check = pool.submit(handle_preempted, load_settings(fleet.env), "default", log=lines.append)
        deadline = time.monotonic() + 60
        while "replica:removed" not in fleet.rental_events(victim):  # out of rotation and destroyed
            assert time.monotonic() < deadline and not check.done(), lines
            time.sleep(0.05)
        assert not long.done()  # the victim went while the stream on the other replica was still running
        meanwhile = [pool.submit(fleet.speak, 400) for _ in range(3)]  # while the replacement is provisioned
        out = check.result(timeout=240)
        assert long.result() == ms * PCM_BYTES_PER_MS  # the stream on the other replica, whole
        assert [f.result() for f in meanwhile] == [400 * PCM_BYTES_PER_MS] * 3
    assert out.removed == [victim] and len(out.added.names) == 1, lines
    assert any(f"{victim} (rental {victim[1:]}): outbid" in line for line in lines), lines
    assert sorted(fleet.active()) == sorted([busy, *out.added.names])
    assert victim not in stats() and all(s.up for s in stats().values())
    kinds = fleet.rental_events(victim)
    assert kinds.index("preempted") < kinds.index("replica:draining") < kinds.index("replica:removed"), kinds
    with Ledger(fleet.home / "ledger.sqlite3") as ledger:
        assert ledger.get(int(victim[1:])).status == "destroyed"
