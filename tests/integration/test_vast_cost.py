"""`deploy cost` against the strict vast.ai emulator's own record of what each instance billed (`vast.billing(iid)`:
GPU while running, disk from create to destroy): within 1 % on the normal and failed paths (the adopted
one is in test_vast_faults.py, the self-destroyed one in test_vast_watchdog.py), beside vast's charge rows, and "pending" where vast has none yet.
The emulator's clock is never advanced here: its time is deploy's time.
"""

from __future__ import annotations

import json

import pytest

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
