"""A fleet of vast.ai rentals against the emulator (vast.ai itself is the one thing emulated), through the real vastai
CLI and the loopback sshd: GPU fallback, parallel provision, a box that dies and is healed, scale down; after every
step nothing runs at the "provider" that the ledger does not know. Box-only (`--no-runtime`): the runtime on rented
boxes has its own tests; here the billing invariants are what is checked."""

from __future__ import annotations

import json

from deploy.fleet import FleetStore
from deploy.ledger import Ledger
from tests.conftest import unknown_running


def open_vast(home) -> set[str]:
    with Ledger(home / "ledger.sqlite3") as ledger:
        return {r.provider_id for r in ledger.open_rentals("vast")}


def test_fallback_heal_and_scale_leave_nothing_unknown_billing(deploy_cli, vast, deploy_home):
    res = deploy_cli("provision", "--gpu", "3090,4090", "--replicas", "2", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    # one 3090 offer exists: the other replica fell back to the next GPU type
    assert sorted(r["gpu_name"] for r in out["replicas"]) == ["RTX 3090", "RTX 4090"], res.stderr[-2000:]
    assert "falling back to 4090" in res.stderr
    assert open_vast(deploy_home) == vast.running_ids() and unknown_running(vast, deploy_home) == set()

    victim = out["replicas"][0]
    with vast.lock:  # the host dies: vast drops the instance
        vast.instances[int(victim["provider_id"])]["_destroyed_at"] = vast.now()
    res = deploy_cli("heal", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    healed = json.loads(res.stdout)
    assert healed["replaced"] == [victim["replica"]] and len(healed["added"]) == 1, healed
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        assert not ledger.get(victim["rental_id"]).is_open
        store = FleetStore(ledger)
        assert len(store.replicas(store.get("default"), ("active",))) == 2
    assert open_vast(deploy_home) == vast.running_ids() and unknown_running(vast, deploy_home) == set()
    assert len(vast.running_ids()) == 2

    res = deploy_cli("scale", "1", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(json.loads(res.stdout)["removed"]) == 1
    assert len(vast.running_ids()) == 1 and open_vast(deploy_home) == vast.running_ids()

    res = deploy_cli("gateway", "start")  # box-only replicas have no server for a gateway
    assert res.returncode == 1 and "has no server endpoint" in res.stderr
    res = deploy_cli("provision", "--gpu", "4090", "--replicas", "1")  # the name is taken
    assert res.returncode == 1 and "fleet 'default' exists already" in res.stderr
    assert unknown_running(vast, deploy_home) == set()
    deploy_cli("teardown", "--all", "--yes")
    assert vast.running_ids() == set()
