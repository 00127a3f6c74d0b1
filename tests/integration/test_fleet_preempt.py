"""A mixed fleet on the vast.ai emulator (vast.ai itself is the one thing emulated), through the real vastai CLI and the
loopback sshd, box-only (`--no-runtime`: the billing invariants are what is checked here; the runtime on rented
boxes has its own tests): one replica on demand, the rest at a bid; an outbid replica is noticed by the next check,
destroyed (a stopped instance bills its disk) and replaced at a bid, on demand when no bid offer is left or no bid box
comes up within the deadline; and after every step, and after a `kill -9` of the autoscale loop during an add or a
replacement, nothing runs at the provider that the ledger does not name.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from deploy.ledger import Ledger
from deploy.ledger.fleets import FleetStore
from tests.conftest import DEPLOY_BIN, unknown_running
from tests.integration.test_vast_kill import untracked_running, wait_for_orphans

ONCE = ["autoscale", "--min", "1", "--max", "4", "--once", "--json"]


def replicas(home) -> dict[str, dict]:
    """Active replicas: name -> {rental id, provider id, interruptible}."""
    with Ledger(home / "ledger.sqlite3") as ledger:
        store = FleetStore(ledger)
        return {
            r.name: {"rid": r.rental.id, "id": r.rental.provider_id, "bid": r.rental.billing.interruptible}
            for r in store.replicas(store.get("default"), ("active",))
        }


def billed_all_recorded(vast, home) -> None:
    with Ledger(home / "ledger.sqlite3") as ledger:
        open_ids = {r.provider_id for r in ledger.open_rentals("vast")}
    assert unknown_running(vast, home) == set() and open_ids == vast.running_ids()


def no_bid_offers_left(vast) -> None:
    with vast.lock:
        for offer in vast.offers.values():
            offer["min_bid"] = None


def mixed_fleet(deploy_cli, vast, home) -> dict[str, dict]:
    res = deploy_cli("provision", "--gpu", "4090", "--replicas", "2", "--interruptible", "--on-demand-min", "1",
                     "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    fleet = replicas(home)
    assert sorted(r["bid"] for r in fleet.values()) == [False, True], fleet  # K=1 on demand, the rest at a bid
    billed_all_recorded(vast, home)
    return fleet


def test_outbid_replica_is_noticed_destroyed_and_replaced_bid_first_then_on_demand(deploy_cli, vast, deploy_home):
    for args, said in [
        (["--interruptible", "--on-demand-min", "1"], "--on-demand-min applies to a fleet: add --replicas N"),
        (["--replicas", "2", "--on-demand-min", "1"], "--on-demand-min only applies with --interruptible"),
    ]:
        res = deploy_cli("provision", "--gpu", "4090", *args)
        assert res.returncode == 1 and res.stderr.count("\n") == 1 and said in res.stderr, res.stderr
    assert vast.instances == {}  # refused before anything was rented
    fleet = mixed_fleet(deploy_cli, vast, deploy_home)
    (victim,) = [n for n, r in fleet.items() if r["bid"]]
    vast.outbid(fleet[victim]["id"])
    billed_all_recorded(vast, deploy_home)  # stopped, still billing its disk, still on record

    res = deploy_cli(*ONCE)  # one check of the loop notices it
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{victim} (rental {fleet[victim]['rid']}): outbid" in res.stderr
    now = replicas(deploy_home)
    assert victim not in now and len(now) == 2 and sorted(r["bid"] for r in now.values()) == [False, True], now
    (new,) = set(now) - set(fleet)
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        gone = ledger.get(fleet[victim]["rid"])
        kinds = [e["kind"] for e in ledger.events(gone.id)]
        assert gone.status == "destroyed" and gone.billing.preempted_at is not None
        assert kinds.index("preempted") < kinds.index("replica:draining") < kinds.index("replica:removed"), kinds
    assert str(fleet[victim]["id"]) not in vast.running_ids()
    billed_all_recorded(vast, deploy_home)

    # no bid offer left: the replacement of the next outbid replica is rented on demand
    no_bid_offers_left(vast)
    vast.outbid(now[new]["id"])
    res = deploy_cli("heal", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    healed = json.loads(res.stdout)
    assert healed["replaced"] == [new] and len(healed["added"]) == 1, healed
    assert "renting this replica on demand" in res.stderr
    after = replicas(deploy_home)
    assert len(after) == 2 and not after[healed["added"][0]]["bid"], after
    billed_all_recorded(vast, deploy_home)

    # a bid box that never leaves `loading`: at the deadline its attempt is rolled back (destroyed), then on demand
    stuck = vast.add_offer(id=1101, gpu_name="RTX 4090", dph_total=0.30, min_bid=0.10, host_id=41, machine_id=410)
    vast.stick_loading(stuck)
    vast.add_offer(id=1102, gpu_name="RTX 4090", dph_total=0.50, min_bid=None, host_id=42, machine_id=420)
    res = deploy_cli("scale", "3", "--json", env={"DEPLOY_INTERRUPTIBLE_DEADLINE_S": "3"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "no interruptible replica came up within 3 s; renting this replica on demand" in res.stderr
    (added,) = json.loads(res.stdout)["added"]
    assert not replicas(deploy_home)[added]["bid"]
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        (bid_row,) = [r for r in ledger.rentals() if r.offer_id == str(stuck)]
        assert bid_row.status == "destroyed"  # the attempt at a bid was rolled back
    assert [b.get("price") for b in vast.bodies("PUT", rf"/asks/{stuck}/")] == [0.1]  # it was a bid
    billed_all_recorded(vast, deploy_home)
    deploy_cli("teardown", "--all", "--yes")
    assert vast.running_ids() == set()


def step_count(home, kind: str) -> int:
    path = home / "ledger.sqlite3"
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM events WHERE kind=?", (kind,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.parametrize(
    ("change", "event"),
    [("add", "step:rent"), ("replace", "preempted"), ("replace", "step:rent")],
)  # fmt: skip
def test_kill_9_of_autoscale_mid_change_leaves_nothing_unrecorded(change, event, deploy_cli, vast, vast_env,
                                                                 deploy_home):  # fmt: skip
    bid = ["--interruptible"] if change == "replace" else []
    res = deploy_cli("provision", "--gpu", "4090", "--replicas", "1", *bid)
    assert res.returncode == 0, res.stderr[-3000:]
    if change == "replace":
        vast.outbid(next(iter(replicas(deploy_home).values()))["id"])
        args = ONCE
    else:
        args = ["autoscale", "--min", "2", "--max", "2", "--once"]  # below --min: add one
    before = step_count(deploy_home, event)
    env = {**vast_env, "DEPLOY_VAST_CREATE_WINDOW_S": "0"}
    proc = subprocess.Popen([str(DEPLOY_BIN), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while step_count(deploy_home, event) <= before:
            if proc.poll() is not None:
                raise AssertionError(f"autoscale ended before {event}: {proc.communicate()[1].decode()[-3000:]}")
            assert time.monotonic() < deadline, f"{event} never came"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        wait_for_orphans(proc.pid, deploy_home)
    assert untracked_running(vast, deploy_home) == set()

    status = subprocess.run([str(DEPLOY_BIN), "status", "--json"], env=env, capture_output=True, text=True)
    assert status.returncode == 0, status.stderr[-2000:]
    assert unknown_running(vast, deploy_home) == set()
    down = subprocess.run([str(DEPLOY_BIN), "teardown", "--all", "--yes"], env=env, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr[-2000:]
    assert vast.running_ids() == set()


def test_scale_makes_an_on_demand_fleet_mixed(deploy_cli, vast, deploy_home):
    res = deploy_cli("provision", "--gpu", "4090", "--replicas", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    res = deploy_cli("scale", "2", "--interruptible", "--bid-over-min", "10", "--on-demand-min", "1", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    (added,) = json.loads(res.stdout)["added"]
    assert replicas(deploy_home)[added]["bid"]
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        offer = int(ledger.get(int(added[1:])).offer_id)
        said = [e["detail"] for e in ledger.db.execute("SELECT detail FROM events WHERE kind='fleet'")]
    assert [b.get("price") for b in vast.bodies("PUT", rf"/asks/{offer}/")] == [round(vast_min_bid(offer) * 1.1, 6)]
    assert any("new replicas: at least 1 on demand, the rest interruptible (10% over min bid)" in d for d in said), said
    res = deploy_cli("scale", "2", "--bid", "0.2")  # the fleet's spec is interruptible: a new bid is taken
    assert res.returncode == 0, res.stderr[-3000:]
    res = deploy_cli("scale", "2", "--on-demand", "--bid", "0.2")
    assert res.returncode == 1 and "only apply with --interruptible" in res.stderr
    billed_all_recorded(vast, deploy_home)
    deploy_cli("teardown", "--all", "--yes")
    assert vast.running_ids() == set()


def vast_min_bid(offer: int) -> float:
    from tests.fakes.vast.offers import default_offers

    return next(o["min_bid"] for o in default_offers() if o["id"] == offer)


def test_the_spend_cap_bounds_the_replacement_of_an_outbid_replica(deploy_cli, vast, deploy_home):
    """A bid replica replaced on demand costs more than the bid it replaces; the autoscale's spend cap is hard: no
    room left holds the replacement, and some room bounds the replacement's offer price by it."""
    res = deploy_cli("provision", "--gpu", "4090", "--replicas", "3", "--interruptible", "--on-demand-min", "1",
                     "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    fleet = replicas(deploy_home)
    first, second = sorted(n for n, r in fleet.items() if r["bid"])
    (kept,) = [n for n, r in fleet.items() if not r["bid"]]
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        rate = {n: ledger.get(r["rid"]).rate_usd_h for n, r in fleet.items()}
    no_bid_offers_left(vast)
    creates = len(vast.bodies("PUT", r"/asks/\d+/"))

    vast.outbid(fleet[first]["id"])  # the two others already cost the whole cap: no room
    res = deploy_cli(*ONCE, "--max-usd-per-hour", str(round(rate[kept] + rate[second], 6)))
    assert f"spend cap holds the replacement of {first}" in res.stderr, res.stderr[-3000:]
    assert sorted(replicas(deploy_home)) == sorted([kept, second])  # destroyed, not replaced
    billed_all_recorded(vast, deploy_home)

    vast.outbid(fleet[second]["id"])  # room for $0.05/h once it is gone: no on-demand 4090 is that cheap
    res = deploy_cli(*ONCE, "--max-usd-per-hour", str(round(rate[kept] + 0.05, 6)))
    assert f"replacing {second} at most $0.050/h each (the spend cap's room)" in res.stderr, res.stderr[-3000:]
    assert list(replicas(deploy_home)) == [kept]
    assert len(vast.bodies("PUT", r"/asks/\d+/")) == creates  # nothing rented over the cap in either check
    assert {str(fleet[n]["id"]) for n in (first, second)}.isdisjoint(vast.running_ids())
    billed_all_recorded(vast, deploy_home)
    deploy_cli("teardown", "--all", "--yes")
    assert vast.running_ids() == set()
