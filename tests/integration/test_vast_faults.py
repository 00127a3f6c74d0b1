"""Nothing bills unseen: provision, status and teardown through the real console script and the real vastai CLI while
the vast.ai emulator (strict: vast as it is) fails around create and destroy. After each fault, whatever the emulator
still runs is an open row in the ledger (`unknown_running` is empty), and nothing runs after `teardown --all --yes`.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from deploy.ledger import Ledger
from tests.conftest import DEPLOY_BIN, box_only, unknown_running
from tests.fakes.ledger_view import ledger_rows as rows


def provision(deploy_cli, *args: str, env: dict | None = None):
    res = deploy_cli("provision", "--gpu", "4090", "--json", *args, env=env)
    return res, (json.loads(res.stdout) if res.returncode == 0 else None)


def end_everything(deploy_cli, vast, deploy_home) -> None:
    down = deploy_cli("teardown", "--all", "--yes")
    assert down.returncode == 0, down.stderr[-2000:]
    assert vast.running_ids() == set() and all(not r.is_open for r in rows(deploy_home))


def cost_line(deploy_cli, rid: int) -> dict:
    res = deploy_cli("cost", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    (line,) = [x for x in json.loads(res.stdout)["lines"] if x["key"] == str(rid)]
    return line


def test_a_create_that_went_through_but_answered_500_is_adopted_and_a_failing_destroy_is_retried(
    deploy_cli, vast, deploy_home
):
    vast.lose_create_response(times=1, status=500)
    res, out = provision(deploy_cli, "--max-offers", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = rows(deploy_home)
    assert row.status == "ready" and out["provider_id"] == row.provider_id and row.provider_id in vast.running_ids()
    assert vast.count("PUT", r"^/api/v0/asks/") == 1  # not created twice
    assert out["check"] and "Linux" in out["check"][0]  # our key was attached to the adopted box: SSH works
    assert unknown_running(vast, deploy_home) == set()

    vast.destroy_fails(times=2, status=500)
    down = deploy_cli("teardown", str(row.id))
    assert down.returncode == 0, down.stderr[-2000:]
    assert vast.running_ids() == set() and rows(deploy_home)[0].status == "destroyed"
    bill = vast.billing(int(row.provider_id))  # the adopted rental costs what vast billed
    assert cost_line(deploy_cli, row.id)["usd"] == pytest.approx(bill["total_usd"], rel=0.01)


def test_500s_after_create_are_retried_and_a_rate_limited_rollback_destroy_is_not_a_cleanup_failure(
    deploy_cli, vast, deploy_home
):
    vast.fail_after_create(3, status=500)  # the attach, and the first polls
    vast.kill_ssh(1001)  # so the first box is rolled back ...
    vast.destroy_fails(times=4, status=429)  # ... by a destroy refused more often than the CLI's 3 quick tries absorb
    res, out = provision(deploy_cli, "--ssh-timeout", "2", "--max-offers", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    first, second = rows(deploy_home)
    assert first.status == "destroyed" and "SSH did not answer" in first.reason and second.status == "ready"
    assert vast.instances[int(first.provider_id)]["_destroyed_at"] is not None
    assert vast.count("PUT", r"^/api/v0/asks/") == 2 and unknown_running(vast, deploy_home) == set()
    end_everything(deploy_cli, vast, deploy_home)


def test_an_outage_mid_provision_and_during_teardown_is_waited_out(vast_env, vast, deploy_home, deploy_cli):
    proc = subprocess.Popen(
        [str(DEPLOY_BIN), *box_only(["provision", "--gpu", "4090", "--json", "--max-offers", "1"])],
        env=vast_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any(r.provider_id for r in (rows(deploy_home) if (deploy_home / "ledger.sqlite3").exists() else [])):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    vast.outage(8)  # every call answers 500 for 8 s: polls, the SSH key's attach
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert json.loads(out)["status"] == "ready" and vast.count("PUT", r"^/api/v0/asks/") == 1
    vast.outage(6)
    end_everything(deploy_cli, vast, deploy_home)


def test_a_destroy_that_keeps_failing_stops_provision_names_the_instance_and_teardown_keeps_the_row(
    deploy_cli, vast, deploy_home
):
    vast.kill_ssh(1001)
    vast.destroy_fails(times=-1, status=500)
    quick = {"DEPLOY_VAST_RETRY_S": "3"}
    res, _ = provision(deploy_cli, "--ssh-timeout", "2", "--max-offers", "2", env=quick)
    assert res.returncode == 1
    (row,) = rows(deploy_home)  # provision stopped: no second offer while the first still bills
    last = res.stderr.strip().splitlines()[-1]
    assert f"vast instance {row.provider_id}" in last and f"run `deploy teardown {row.id}`" in last, last
    assert row.is_open and vast.running_ids() == {row.provider_id} and unknown_running(vast, deploy_home) == set()

    down = deploy_cli("teardown", str(row.id), env=quick)
    assert down.returncode == 1 and "run it again" in down.stderr.strip().splitlines()[-1]
    assert rows(deploy_home)[0].is_open and vast.running_ids() == {row.provider_id}

    vast.faults.clear()  # vast recovers
    down = deploy_cli("teardown", str(row.id))
    assert down.returncode == 0, down.stderr[-2000:]
    assert vast.running_ids() == set() and rows(deploy_home)[0].status == "destroyed"


def test_the_box_keeps_its_instance_key_and_a_lost_ledger_still_finds_and_ends_what_runs(
    deploy_cli, vast, deploy_home, tmp_path
):
    from csm_runtime.watchdog import InstanceKey, destroy_instance, environ_of_file

    res, out = provision(deploy_cli, "--max-offers", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    iid = int(out["provider_id"])
    saved = vast.box(iid).home / ".csm-deploy-instance.env"  # what the onstart saved for the box's watchdog
    assert saved.stat().st_mode & 0o777 == 0o600
    env = environ_of_file(str(saved))
    assert env == {"CONTAINER_ID": str(iid), "CONTAINER_API_KEY": vast.instances[iid]["_api_key"]}
    key = env["CONTAINER_API_KEY"]
    assert key not in res.stdout + res.stderr and key.encode() not in (deploy_home / "ledger.sqlite3").read_bytes()
    other = vast.create_direct(1002, "csm-deploy:feedface:7")  # ours by label, in no ledger
    with pytest.raises(OSError, match="403"):
        destroy_instance(vast.url, InstanceKey(str(other), key))  # the key ends its own instance only

    empty = {"DEPLOY_HOME": str(tmp_path / "another-home")}  # the ledger is lost (a new laptop, a wiped disk)
    status = deploy_cli("status", "--json", env=empty)
    assert status.returncode == 0, status.stderr[-2000:]
    assert sorted((e["kind"], e["live"]["id"]) for e in json.loads(status.stdout)) == [
        ("orphan", str(iid)),
        ("orphan", str(other)),
    ]
    destroy_instance(vast.url, InstanceKey(str(iid), key))  # what the box's watchdog does
    down = deploy_cli("teardown", "--all", "--yes", env=empty)
    assert down.returncode == 0, down.stderr[-2000:]
    assert vast.running_ids() == set()
    with Ledger(tmp_path / "another-home" / "ledger.sqlite3") as ledger:
        (row,) = ledger.rentals()
    assert row.provider_id == str(other) and row.status == "destroyed"  # recorded before it was destroyed

    status = json.loads(deploy_cli("status", "--json").stdout)  # the first ledger: its box ended itself
    assert [(e["kind"], e["rental"]["provider_id"]) for e in status] == [("ghost", str(iid))]
    assert deploy_cli("teardown", "--all", "--yes").returncode == 0
    assert all(not r.is_open for r in rows(deploy_home))
