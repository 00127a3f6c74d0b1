"""`deploy cost` and `deploy status` say which money is which: interruptible and on-demand apart, the preemptions, and
a fleet's USD per hour of audio over its last hour and day.

- Against the vast.ai emulator (vast.ai is what is emulated) through the real vastai CLI, box-only: an on-demand
  rental and an interruptible fleet replica, the replica outbid (vast stops it) and noticed by `deploy status`.
  With no server on the boxes nothing counts audio: the USD per hour of audio is "unknown", never $0.
- On this machine (`--provider local`, a real tiny-random server): one request served, then the fleet's last hour
  is priced over the audio the replica's own /metrics counted, and the reading is kept in the ledger.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest

from deploy.costs.audio import AUDIO_SAMPLE
from deploy.fleet.model import replica_token
from deploy.ledger import Ledger
from deploy.ledger.fleets import FleetStore
from tests.conftest import run_deploy, unknown_running
from tests.fakes.ledger_view import ledger_rows as rows


def flat(text: str) -> str:
    return " ".join(text.split())  # rich folds long lines and captions


def test_cost_and_status_split_interruptible_from_on_demand_with_the_preemption(deploy_cli, vast, deploy_home):
    res = deploy_cli("provision", "--gpu", "4090", "--max-offers", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    res = deploy_cli("provision", "--gpu", "4090", "--interruptible", "--replicas", "1", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    on_demand, bid = rows(deploy_home)
    assert not on_demand.billing.interruptible and bid.billing.interruptible and bid.billing.bid_usd_h

    vast.outbid(int(bid.provider_id))  # vast stops it for a higher bid
    status = deploy_cli("status")
    assert status.returncode == 0, status.stderr[-2000:]
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        assert [e["kind"] for e in ledger.events(bid.id)].count("preempted") == 1  # noticed once
    text = flat(status.stdout)
    assert "fleet default, last hour: $" in text and "fleet default, last day: $" in text
    assert "on-demand 0 rental(s)" in text and "interruptible 1 rental(s)" in text and "1 preemption(s)" in text
    assert "per hour of audio: unknown" in text and "$0.0000 per hour of audio" not in text

    res = deploy_cli("cost", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    cost = json.loads(res.stdout)
    split = cost["split"]
    assert (split["on_demand"]["rentals"], split["interruptible"]["rentals"], split["preemptions"]) == (1, 1, 1)
    assert split["on_demand"]["usd"] > 0 and split["interruptible"]["usd"] > 0
    assert split["on_demand"]["usd"] + split["interruptible"]["usd"] == pytest.approx(cost["total_usd"], abs=2e-6)
    lines = {x["key"]: x for x in cost["lines"]}
    assert lines[str(on_demand.id)]["kind"] == "on-demand" and lines[str(bid.id)]["kind"] == "interruptible"
    assert lines[str(bid.id)]["bid_usd_h"] == bid.billing.bid_usd_h
    (fleet,) = cost["fleets"]
    hour = fleet["last_hour"]
    assert (hour["interruptible"]["rentals"], hour["on_demand"]["rentals"], hour["preemptions"]) == (1, 0, 1)
    assert hour["usd"] == pytest.approx(lines[str(bid.id)]["usd"], rel=0.05)  # its whole life is in the hour
    assert hour["audio_seconds"] is None and hour["usd_per_audio_h"] is None  # no server: nothing counted

    table = deploy_cli("cost")
    assert table.returncode == 0, table.stderr[-2000:]
    text = flat(table.stdout)
    assert "by kind: on-demand 1 rental(s)" in text and "interruptible 1 rental(s)" in text
    assert "1 preemption(s)" in text and f"interruptible (bid ${bid.billing.bid_usd_h:.3f})" in text

    assert deploy_cli("teardown", "--all", "--yes").returncode == 0
    assert vast.running_ids() == set() and unknown_running(vast, deploy_home) == set()
    after = json.loads(deploy_cli("cost", "--json").stdout)["split"]
    assert after["preemptions"] == 1 and after["interruptible"]["rentals"] == 1  # history stays split


def test_a_fleets_last_hour_is_priced_over_the_audio_its_replica_counted(tmp_path):
    env = {**os.environ, "DEPLOY_HOME": str(tmp_path / "home"), "DEPLOY_POLL_INTERVAL_S": "0.2",
           "CSM_DEVICE": "cpu", "CSM_CPU_THREADS": "1", "DEPLOY_LOCAL_RATE": "0.5"}  # fmt: skip
    env.pop("VAST_API_KEY", None)
    res = run_deploy(["provision", "--provider", "local", "--model", "tiny-random", "--no-autotune", "--replicas", "1",
                      "--json"], env, timeout=240)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    try:
        with Ledger(tmp_path / "home" / "ledger.sqlite3") as ledger:
            store = FleetStore(ledger)
            (replica,) = store.replicas(store.get("default"))
        body = {"model": "tts-1", "voice": "echo", "input": "Counted.", "response_format": "pcm", "max_audio_ms": 800}
        headers = {"Authorization": f"Bearer {replica_token(replica)}"}
        r = httpx.post(replica.endpoint + "/v1/audio/speech", json=body, headers=headers, timeout=120)
        assert r.status_code == 200 and len(r.content) == 800 * 48

        res = run_deploy(["cost", "--json"], env)
        assert res.returncode == 0, res.stderr[-2000:]
        (fleet,) = json.loads(res.stdout)["fleets"]
        hour = fleet["last_hour"]
        assert hour["audio_seconds"] == pytest.approx(0.8, abs=0.1)  # the replica's own counter
        assert hour["counted_usd"] > 0 and hour["coverage"] == pytest.approx(1.0, abs=0.01)
        assert hour["usd_per_audio_h"] == pytest.approx(hour["counted_usd"] / (hour["audio_seconds"] / 3600), rel=1e-3)
        assert hour["on_demand"]["rentals"] == 1 and hour["preemptions"] == 0
        with Ledger(tmp_path / "home" / "ledger.sqlite3") as ledger:
            readings = [e for e in ledger.events(replica.rental.id) if e["kind"] == AUDIO_SAMPLE]
        assert len(readings) == 1 and float(readings[0]["detail"]) == pytest.approx(hour["audio_seconds"], abs=0.01)
        status = run_deploy(["status"], env)
        assert status.returncode == 0, status.stderr[-2000:]
        assert "per hour of audio (0.8 s of audio from the replicas' /metrics, 100% of the spend)" in flat(
            status.stdout
        )
    finally:
        run_deploy(["teardown", "--all", "--yes"], env)
