"""A fleet of vast.ai rentals against the emulator (vast.ai itself is the one thing emulated), through the real vastai
CLI and the loopback sshd: GPU fallback, parallel provision, a box that dies and is healed, scale down; after every
step nothing runs at the "provider" that the ledger does not know. Box-only (`--no-runtime`): the runtime on rented
boxes has its own tests; here the billing invariants are what is checked."""

from __future__ import annotations

import json

from deploy.ledger import Ledger
from deploy.ledger.fleets import FleetStore
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


def test_sigterm_during_parallel_provision_rolls_each_replica_back(vast, vast_env, deploy_home):
    """Both replicas are renting (their boxes stuck loading) when SIGTERM arrives: each attempt destroys what it
    rented, no further offer is tried, and the command exits as interrupted."""
    import signal
    import subprocess
    import time

    from tests.conftest import DEPLOY_BIN

    for offer in (1001, 1002, 1003, 1004):
        vast.stick_loading(offer)
    env = {**vast_env, "DEPLOY_READY_TIMEOUT_S": "600"}  # the boxes never run: SIGTERM stops the waits, not a deadline
    proc = subprocess.Popen([str(DEPLOY_BIN), "provision", "--gpu", "4090", "--replicas", "2", "--no-runtime"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while True:
        with Ledger(deploy_home / "ledger.sqlite3") as ledger:
            before = ledger.rentals()  # the two racing for offer 1001 may leave a `not_created` row too
            if sum(1 for r in before if r.status == "rented") == 2:
                break
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err  # 128 + SIGTERM
    assert "interrupted" in err
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        rows = ledger.rentals()
    assert len(rows) == len(before) and all(not r.is_open for r in rows), [
        (r.id, r.status) for r in rows
    ]  # no new offer
    assert vast.running_ids() == set() and unknown_running(vast, deploy_home) == set()
