"""`deploy cost` against the strict vast.ai emulator's own record of what each instance billed (`vast.billing(iid)`:
GPU while running, disk from create to destroy): within 1 % on the normal and failed paths (the adopted
one is in test_vast_faults.py, the self-destroyed one in test_vast_watchdog.py), beside vast's charge rows, and
"pending" where vast has none yet. A box adopted by `status` is priced while it runs; a box destroyed outside the flow
is priced to where its billing ended (vast's charges, else its last sighting) with the bound shown; the fleet lines
price a replica as `deploy cost` does. The emulator's clock is never advanced here: its time is deploy's time.
"""

from __future__ import annotations

import json
import time

import pytest

from deploy.ledger import Ledger
from tests.fakes.ledger_view import ledger_rows as rows


def cost_lines(deploy_cli) -> dict[str, dict]:
    res = deploy_cli("cost", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    return {line["key"]: line for line in json.loads(res.stdout)["lines"]}


def assert_matches(line: dict, bill: dict) -> None:
    assert line["usd"] == pytest.approx(bill["total_usd"], rel=0.01)
    assert line["gpu_usd"] == pytest.approx(bill["gpu_usd"], rel=0.02, abs=1e-6)
    assert line["disk_usd"] == pytest.approx(bill["disk_usd"], rel=0.02)


def hide_charges(vast):
    """vast has no charge rows yet (they come later than the rental)."""
    original = vast._endpoint

    def no_rows_yet(method, path, query, body):
        if path == "/api/v0/charges/":
            return 200, {"results": [], "count": 0, "total": 0, "next_token": None}, "application/json", {}
        return original(method, path, query, body)

    vast._endpoint = no_rows_yet
    return lambda: setattr(vast, "_endpoint", original)


def test_a_normal_rental_costs_what_vast_billed_and_a_missing_charge_is_pending(deploy_cli, vast, deploy_home):
    res = deploy_cli("provision", "--gpu", "4090", "--max-offers", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = rows(deploy_home)
    restore = hide_charges(vast)
    table = deploy_cli("cost")
    assert table.returncode == 0 and "pending" in table.stdout and "$-" not in table.stdout
    line = cost_lines(deploy_cli)[str(row.id)]
    assert line["theirs"] == "pending" and line["theirs_usd"] is None and line["diff_usd"] is None
    (day,) = json.loads(deploy_cli("cost", "--by", "day", "--json").stdout)["lines"]
    assert day["theirs"] == "pending" and day["diff_usd"] is None
    restore()
    open_line = cost_lines(deploy_cli)[str(row.id)]
    assert open_line["open"] and open_line["theirs"] == "billed"  # vast's running charge, beside ours
    (day,) = json.loads(deploy_cli("cost", "--by", "day", "--json").stdout)["lines"]
    assert day["theirs_usd"] > 0  # vast's charges beside ours, per day
    assert deploy_cli("teardown", str(row.id)).returncode == 0
    bill = vast.billing(int(row.provider_id))
    assert bill["gpu_usd"] > 0 and bill["disk_usd"] > 0
    line = cost_lines(deploy_cli)[str(row.id)]
    assert not line["open"]
    assert_matches(line, bill)
    assert line["theirs_usd"] == pytest.approx(bill["total_usd"], abs=0.0005)  # vast rounds to 3 decimals
    assert set(line["theirs_items"]) == {"gpu", "disk", "bandwidth"}


def test_a_box_that_never_ran_costs_its_disk(deploy_cli, vast, deploy_home):
    vast.stick_loading(1001)
    res = deploy_cli("provision", "--gpu", "4090", "--ready-timeout", "6", "--max-offers", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    stuck, used = rows(deploy_home)
    assert stuck.status == "destroyed" and stuck.running_at is None
    assert deploy_cli("teardown", str(used.id)).returncode == 0
    bill = vast.billing(int(stuck.provider_id))
    assert bill["gpu_usd"] == 0 and bill["disk_usd"] > 0
    lines = cost_lines(deploy_cli)
    assert lines[str(stuck.id)]["gpu_usd"] == 0
    assert_matches(lines[str(stuck.id)], bill)


def wait_running(vast, iid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while vast.billing(iid)["running_at"] is None:
        assert time.monotonic() < deadline, f"instance {iid} never ran"
        time.sleep(0.1)


def test_a_box_adopted_by_status_is_priced_while_it_runs_and_grows(deploy_cli, vast, deploy_home):
    """The row was closed `not_created` (a create that went through, read as refused) and the box appears under its
    label: `status` adopts it, and from then on `deploy cost` counts it, GPU included, up to now."""
    offer, disk_gb = vast.offers[1001], 10
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        intent = ledger.record_intent(
            attempt_id="deadbeef",
            provider="vast",
            label_prefix="csm-deploy",
            offer_id="1001",
            gpu_name=offer["gpu_name"],
            rate_usd_h=offer["dph_total"],
            disk_usd_h=offer.get("storage_cost", 0.15) * disk_gb / 720,
        )
        ledger.close_rental(intent.id, "not_created", "create failed and nothing carries our label")
    iid = vast.create_direct(1001, intent.label)  # disk 10 GB, as the row says
    wait_running(vast, iid)
    status = deploy_cli("status", "--json")
    assert status.returncode == 0 and "adopted" in status.stderr, status.stderr
    (entry,) = json.loads(status.stdout)
    assert entry["kind"] == "tracked" and entry["rental"]["provider_id"] == str(iid)
    gpu_rate = vast.instances[iid]["_gpu_rate"]
    before = vast.billing(iid)
    first = cost_lines(deploy_cli)[str(intent.id)]
    after = vast.billing(iid)
    # the GPU is counted from the box's start (its running start was not seen): an upper bound by that much
    slack = gpu_rate * (after["running_at"] - after["created_at"]) / 3600
    assert first["open"] and first["gpu_usd"] > 0
    assert before["total_usd"] <= first["usd"] <= after["total_usd"] + slack
    second = cost_lines(deploy_cli)[str(intent.id)]
    assert second["usd"] > first["usd"]  # it still bills
    assert deploy_cli("teardown", str(intent.id)).returncode == 0
    bill = vast.billing(iid)
    line = cost_lines(deploy_cli)[str(intent.id)]
    assert not line["open"] and bill["total_usd"] <= line["usd"] <= bill["total_usd"] + slack * 1.01


def destroy_as_its_watchdog(vast, iid: int) -> None:
    """The box ends itself with vast's instance-scoped key (what csm_runtime's watchdog does): outside the flow."""
    import urllib.request

    key = vast.instances[iid]["_api_key"]
    req = urllib.request.Request(
        f"{vast.url}/api/v0/instances/{iid}/", method="DELETE", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["success"]


def test_a_ghost_is_priced_to_its_end_by_charges_else_to_its_last_sighting(deploy_cli, vast, deploy_home):
    res = deploy_cli("provision", "--gpu", "4090", "--max-offers", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = rows(deploy_home)
    iid = int(row.provider_id)
    assert deploy_cli("status").returncode == 0  # seen alive
    destroy_as_its_watchdog(vast, iid)  # while status is not looking
    bill = vast.billing(iid)
    restore = hide_charges(vast)  # vast has no charge row for it yet when status notices
    status = deploy_cli("status", "--json")
    assert status.returncode == 0, status.stderr
    (entry,) = json.loads(status.stdout)
    assert entry["kind"] == "ghost" and f"rental {row.id} (vast {iid}) is gone: ended between" in status.stderr
    ours = cost_lines(deploy_cli)[str(row.id)]
    lo, hi = ours["ended_between"]
    assert lo <= bill["destroyed_at"] <= hi
    assert not ours["open"] and ours["end_source"] == "the last time it was seen alive" and ours["ended_at"] == lo
    assert bill["total_usd"] - row.rate_usd_h * (hi - lo) / 3600 <= ours["usd"] <= bill["total_usd"]
    table = deploy_cli("cost")
    assert f"rental {row.id} (vast {iid}) vanished outside the flow: ended between" in table.stdout, table.stdout
    restore()  # vast's charge rows arrived: they say where it ended
    line = cost_lines(deploy_cli)[str(row.id)]
    assert not line["open"] and line["end_source"] == "vast's charges"
    assert line["ended_at"] == pytest.approx(bill["destroyed_at"], abs=0.01)
    assert_priced_to_its_end(line, bill, rows(deploy_home)[0], vast.instances[iid]["_gpu_rate"])
    assert cost_lines(deploy_cli)[str(row.id)]["usd"] == line["usd"]  # it no longer grows
    assert deploy_cli("teardown", str(row.id)).returncode == 0  # closes the ghost's row
    assert_priced_to_its_end(
        cost_lines(deploy_cli)[str(row.id)], bill, rows(deploy_home)[0], vast.instances[iid]["_gpu_rate"]
    )


def assert_priced_to_its_end(line: dict, bill: dict, row, gpu_rate: float) -> None:
    """Within 1 % of vast's own record once the GPU's start is taken as ours (the box's clock sees its container start
    a moment after vast's `running`; on a box that lived seconds that moment alone is about 1 %)."""
    late = gpu_rate * (row.running_at - bill["running_at"]) / 3600
    assert line["disk_usd"] == pytest.approx(bill["disk_usd"], rel=0.01)  # create to the end vast billed
    assert line["usd"] == pytest.approx(bill["total_usd"] - late, rel=0.01)


def test_fleet_lines_and_deploy_cost_price_a_replica_alike(deploy_cli, vast, deploy_home):
    res = deploy_cli("provision", "--gpu", "4090", "--replicas", "1", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    cost = json.loads(deploy_cli("cost", "--json").stdout)
    (fleet,) = cost["fleets"]
    (line,) = cost["lines"]
    assert fleet["usd"] == pytest.approx(line["usd"], abs=1e-6)  # the same rental at the same moment
    status = deploy_cli("status", "--json")
    assert status.returncode == 0, status.stderr
    (entry,) = json.loads(status.stdout)
    later = cost_lines(deploy_cli)[line["key"]]
    assert line["usd"] - 1e-6 <= entry["replica"]["usd"] <= later["usd"] + 1e-6  # priced alike in between
    assert deploy_cli("teardown", "--all", "--yes").returncode == 0
    bill = vast.billing(int(line["provider_id"]))
    assert_matches(cost_lines(deploy_cli)[line["key"]], bill)
