"""Interruptible (bid) instances through the REAL vastai CLI against the vast.ai emulator (vast.ai itself is what is
emulated): bid offers and their min_bid, a create at a bid, a bid under min_bid refused, an instance outbid (vast
stops it: intended running, actual stopped) that `deploy status` shows preempted and that bills its disk until
`deploy teardown`, and `deploy cost` pricing it at its bid. Nothing bills unrecorded at any point.
"""

from __future__ import annotations

import json

import pytest

from deploy import ledger as L
from deploy.ledger import Ledger
from deploy.providers.records import State
from deploy.providers.vastai_cli import VastCli, VastError
from tests.conftest import unknown_running
from tests.fakes.ledger_view import ledger_rows as rows
from tests.fakes.vast.bids import OUTBID_MSG

MIN_BID_1001 = 0.1575  # offer 1001: 0.35 USD/h on demand, min_bid 45 % of it (tests/fakes/vast/offers.py)
DISK_USD_H = 0.15 * 40 / 720  # 40 GB (DEPLOY_DISK_GB's default) at 0.15 USD/GB/month


@pytest.fixture
def cli(vast_env):
    return VastCli(timeout_s=30)


def events(home, rid: int, kind: str) -> list[dict]:
    with Ledger(home / "ledger.sqlite3") as ledger:
        return [e for e in ledger.events(rid) if e["kind"] == kind]


# --- the emulator, through the vastai CLI -----------------------------------------------------------------------------
def test_bid_offers_carry_min_bid_and_a_bid_create_is_interruptible_at_its_bid(cli, vast):
    offers = cli.search_offers("RTX 4090", max_price=0.2, disk_gb=20, bid=True)
    assert [o.id for o in offers] == ["1001", "1002"]  # min_bid 0.1575 and 0.189; 0.2475 is over the bound
    assert offers[0].min_bid_usd_h == MIN_BID_1001 and offers[0].price_usd_h == 0.35
    (search,) = vast.bodies("POST", r"^/api/v0/bundles/$")
    assert search["type"] == "bid" and float(search["min_bid"]["lte"]) == 0.2
    iid = cli.create_instance("1001", image="img", disk_gb=20, label="csm-deploy:t:1", bid_usd_h=0.2)
    (body,) = vast.bodies("PUT", r"^/api/v0/asks/1001/$")
    assert body["price"] == 0.2  # `--bid_price` is the create body's price
    box = cli.show_instance(iid)
    assert box.interruptible and not box.preempted
    assert box.price_usd_h == pytest.approx(0.2 + 0.15 * 20 / 720, abs=1e-5)
    vast.advance(3600)
    bill = vast.billing(int(iid))
    assert bill["gpu_usd"] == pytest.approx(0.2, rel=0.01)  # the bid, not the on-demand 0.35


def test_a_bid_under_min_bid_is_refused_and_creates_nothing(cli, vast):
    with pytest.raises(VastError) as err:
        cli.create_instance("1001", image="img", disk_gb=20, label="x", bid_usd_h=0.1)
    assert err.value.status_code == 400 and "below the minimum bid 0.1575" in str(err.value)
    assert vast.running_ids() == set()
    on_demand = cli.create_instance("1001", image="img", disk_gb=20, label="y")
    assert not cli.show_instance(on_demand).interruptible
    with pytest.raises(ValueError, match="on-demand"):
        vast.outbid(on_demand)


def test_outbid_stops_the_instance_as_vast_does_and_its_disk_bills_on(cli, vast):
    iid = cli.create_instance("1001", image="img", disk_gb=20, label="csm-deploy:t:1", bid_usd_h=0.2)
    vast.advance(3600)  # an hour running at the bid
    vast.outbid(iid, after_s=60)  # the fault form: vast stops it a minute from now
    assert cli.show_instance(iid).state is State.RUNNING
    vast.advance(60)
    (raw,) = [r for r in vast._listing({})[1]["instances"] if str(r["id"]) == iid]
    assert (raw["intended_status"], raw["actual_status"], raw["cur_state"]) == ("running", "stopped", "stopped")
    box = cli.show_instance(iid)
    assert box.state is State.STOPPED and box.preempted and box.detail == OUTBID_MSG
    assert [b.id for b in cli.show_instances() if b.preempted] == [iid]  # the listing says so too
    cli.call("start", "instance", iid)  # a start does not win the machine back: the higher bid holds it
    assert cli.show_instance(iid).preempted
    vast.advance(3600)  # an hour stopped: disk only
    bill = vast.billing(int(iid))
    assert bill["gpu_hours"] == pytest.approx(1 + 60 / 3600, rel=0.01)
    assert bill["disk_hours"] == pytest.approx(2 + 60 / 3600, rel=0.01)
    (row,) = [c for c in cli.charges(0, vast.now() + 10) if c["source"] == f"instance-{iid}"]
    items = {i["type"]: i["amount"] for i in row["items"]}
    assert items["gpu"] == pytest.approx(0.2 * (1 + 60 / 3600), rel=0.01)
    assert items["disk"] == pytest.approx(0.15 * 20 / 720 * (2 + 60 / 3600), rel=0.01)


# --- deploy provision / status / cost / teardown --------------------------------------------------------------------
def test_provision_interruptible_bids_over_min_and_records_the_bid(deploy_cli, vast, deploy_home):
    res = deploy_cli("provision", "--gpu", "4090", "--interruptible", "--bid-over-min", "20", "--max-offers", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    (body,) = vast.bodies("PUT", r"^/api/v0/asks/\d+/$")
    assert body["price"] == pytest.approx(MIN_BID_1001 * 1.2)
    (row,) = rows(deploy_home)
    assert row.status == L.READY and row.offer_id == "1001"
    assert row.billing.interruptible and row.billing.bid_usd_h == pytest.approx(MIN_BID_1001 * 1.2)
    assert row.rate_usd_h == pytest.approx(MIN_BID_1001 * 1.2 + DISK_USD_H)
    assert vast.instances[int(row.provider_id)]["is_bid"]
    assert unknown_running(vast, deploy_home) == set()


def test_a_bid_under_every_min_bid_is_refused_in_one_line_and_nothing_bills(deploy_cli, vast, deploy_home):
    res = deploy_cli("provision", "--gpu", "4090", "--interruptible", "--bid", "0.1", "--max-offers", "2")
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert "below the minimum bid" in last and "Traceback" not in res.stderr
    assert vast.running_ids() == set() and unknown_running(vast, deploy_home) == set()
    assert [r.status for r in rows(deploy_home)] == [L.NOT_CREATED]  # its intent row, closed: nothing was rented


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--bid", "0.2"], "only apply with --interruptible"),
        (["--interruptible", "--bid", "0.2", "--bid-over-min", "10"], "not both"),
        (["--interruptible", "--bid", "-1"], "above 0"),
        (["--interruptible", "--bid-over-min", "ten"], "is not a number"),
        (["--interruptible", "--provider", "local"], "no interruptible"),
    ],
)
def test_bad_bid_options_are_one_line_errors_before_anything_is_rented(deploy_cli, vast, deploy_home, args, said):
    res = deploy_cli("provision", "--gpu", "4090", *args)
    assert res.returncode != 0 and said in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert vast.count("PUT", r"^/api/v0/asks/") == 0 and rows(deploy_home) == []


def test_an_outbid_box_shows_preempted_stays_recorded_and_costs_its_bid_until_teardown(deploy_cli, vast, deploy_home):
    res = deploy_cli("provision", "--gpu", "4090", "--interruptible", "--max-offers", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = rows(deploy_home)
    iid = row.provider_id
    assert row.billing.bid_usd_h == MIN_BID_1001  # no --bid, no --bid-over-min: the offer's min_bid
    vast.outbid(iid)
    outbid_at = vast.now()
    table = deploy_cli("status")
    assert table.returncode == 0, table.stderr[-2000:]
    assert "preempted" in table.stdout
    listed = json.loads(deploy_cli("status", "--json").stdout)
    (entry,) = [e for e in listed if e["rental"] and e["rental"]["id"] == row.id]
    assert entry["kind"] == "tracked" and entry["live"]["preempted"] and entry["live"]["state"] == "stopped"
    (event,) = events(deploy_home, row.id, "preempted")  # once, however many times it is seen
    assert "higher bid" in event["detail"] and "disk bills" in event["detail"]
    (row,) = rows(deploy_home)
    assert row.is_open and row.billing.preempted_at is not None
    assert str(iid) in vast.running_ids() and unknown_running(vast, deploy_home) == set()  # stopped, still billing

    def assert_priced() -> None:
        """At the bid: the GPU up to when status first saw it stopped (an upper bound of vast's stop), the disk to
        the end (vast's own account is read before and after `deploy cost`: an open rental's disk still bills)."""
        before = vast.billing(int(iid))
        res = deploy_cli("cost", "--json")
        assert res.returncode == 0, res.stderr[-2000:]
        line = {x["key"]: x for x in json.loads(res.stdout)["lines"]}[str(row.id)]
        after = vast.billing(int(iid))
        assert after["gpu_usd"] == pytest.approx(MIN_BID_1001 * after["gpu_hours"], rel=1e-6)  # vast bills the bid
        assert before["gpu_usd"] == after["gpu_usd"]  # stopped: the GPU no longer bills
        slack = MIN_BID_1001 * (row.billing.preempted_at - outbid_at) / 3600
        assert after["gpu_usd"] * 0.99 <= line["gpu_usd"] <= after["gpu_usd"] * 1.01 + slack
        assert before["disk_usd"] * 0.99 <= line["disk_usd"] <= after["disk_usd"] * 1.01

    assert_priced()
    down = deploy_cli("teardown", str(row.id), "--yes")
    assert down.returncode == 0, down.stderr[-2000:]
    (row,) = rows(deploy_home)
    assert row.status == L.DESTROYED and vast.running_ids() == set()
    assert_priced()


def test_the_bid_options_travel_in_a_fleet_spec_and_price_each_offer():
    """What a fleet stores to make more replicas alike keeps the bid; the bid follows each offer's min_bid."""
    from deploy.providers.records import Offer
    from deploy.provision.options import ProvisionOptions

    offer = Offer("vast", "1001", "RTX 4090", price_usd_h=0.35, min_bid_usd_h=0.2)
    options = ProvisionOptions(interruptible=True, bid_over_min_pct=15.0)
    again = ProvisionOptions.from_dict(json.loads(json.dumps(options.as_dict())))
    assert again == options and again.bid_for(offer) == pytest.approx(0.23)
    assert ProvisionOptions(interruptible=True).bid_for(offer) == 0.2
    assert ProvisionOptions(interruptible=True, bid_usd_h=0.1).bid_for(offer) == 0.1  # vast refuses it, not us
    assert ProvisionOptions().bid_for(offer) is None
    assert ProvisionOptions.from_dict({"provider": "vast", "gpu": None}).interruptible is False  # an older spec
