"""Provision scenarios against the vast.ai emulator (vast.ai cannot be reached: it is the one thing emulated),
driven through the REAL vastai CLI and a REAL sshd on loopback. Each ends by checking that the emulator runs nothing
the ledger does not know."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from deploy.ledger import Ledger
from tests.conftest import DEPLOY_BIN, box_only, unknown_running
from tests.fakes.ledger_view import ledger_rows


def test_happy_path_through_the_console_script(deploy_cli, vast, sshd, deploy_home):
    res = deploy_cli("provision", "--gpu", "4090", "--max-price", "0.5", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["status"] == "ready" and out["provider"] == "vast"
    assert out["rate_usd_h"] == 0.35  # the cheapest 4090 offer
    assert out["check"] and "Linux" in out["check"][0]
    (row,) = ledger_rows(deploy_home)
    assert row.provider_id in vast.running_ids()
    assert row.label == f"csm-deploy:{row.attempt_id}:{row.id}"
    assert vast.instances[int(row.provider_id)]["label"] == row.label  # the rental carries our label
    assert row.host_key == vast.box(int(row.provider_id)).host_key_pub  # the box's own sshd, pinned on first use
    # progress went to stderr, the result alone to stdout
    assert "rent" in res.stderr

    status = deploy_cli("status", "--json")
    assert status.returncode == 0, status.stderr
    (entry,) = json.loads(status.stdout)
    assert entry["kind"] == "tracked" and entry["live"]["raw_status"] == "running"

    ssh = deploy_cli("ssh", str(row.id), "--", "echo", "hello-from-box")
    assert ssh.returncode == 0, ssh.stderr
    assert "hello-from-box" in ssh.stdout

    events = deploy_cli("logs", str(row.id), "--events", "--json")
    kinds = [e["kind"] for e in json.loads(events.stdout)]
    assert kinds.index("intent") < kinds.index("rented") < kinds.index("ready")

    cost = deploy_cli("cost", "--json")
    assert cost.returncode == 0, cost.stderr
    report = json.loads(cost.stdout)
    (line,) = report["lines"]
    assert line["open"] and line["usd"] > 0 and line["theirs_usd"] is not None

    down = deploy_cli("teardown", str(row.id))
    assert down.returncode == 0, down.stderr
    assert vast.running_ids() == set()
    (row,) = ledger_rows(deploy_home)
    assert row.status == "destroyed" and row.ended_at is not None
    # the API key never reaches the ledger
    raw = (deploy_home / "ledger.sqlite3").read_bytes()
    assert vast.api_key.encode() not in raw
    assert unknown_running(vast, deploy_home) == set()


def test_first_offer_refused_next_offer_used(deploy_cli, vast, deploy_home):
    vast.refuse(1001)
    res = deploy_cli("provision", "--gpu", "4090", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["rate_usd_h"] == 0.42
    rows = ledger_rows(deploy_home)
    assert [r.status for r in rows] == ["not_created", "ready"]
    assert rows[0].provider_id is None and rows[0].ended_at is not None
    assert unknown_running(vast, deploy_home) == set()
    deploy_cli("teardown", "--all", "--yes")
    assert vast.running_ids() == set()


def test_stuck_loading_is_destroyed_and_next_offer_used(deploy_cli, vast, deploy_home):
    vast.stick_loading(1001)
    res = deploy_cli("provision", "--gpu", "4090", "--ready-timeout", "2", "--json")
    assert res.returncode == 0, res.stderr
    rows = ledger_rows(deploy_home)
    assert [r.status for r in rows] == ["destroyed", "ready"]
    assert "not running before the deadline" in rows[0].reason
    stuck_id = int(rows[0].provider_id)
    assert vast.instances[stuck_id]["_destroyed_at"] is not None
    assert unknown_running(vast, deploy_home) == set()
    deploy_cli("teardown", "--all", "--yes")


def test_ssh_never_ready_is_destroyed(deploy_cli, vast, deploy_home):
    for offer in (1001, 1002):
        vast.kill_ssh(offer)
    res = deploy_cli("provision", "--gpu", "4090", "--ssh-timeout", "1.5", "--max-offers", "2")
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: no offer could be provisioned after 2 tries")
    rows = ledger_rows(deploy_home)
    assert [r.status for r in rows] == ["destroyed", "destroyed"]
    assert all("SSH did not answer" in r.reason for r in rows)
    assert vast.running_ids() == set()
    assert unknown_running(vast, deploy_home) == set()


def test_keep_on_failure_leaves_the_box_and_names_teardown(deploy_cli, vast, deploy_home):
    vast.kill_ssh(1001)
    res = deploy_cli("provision", "--gpu", "4090", "--ssh-timeout", "1", "--max-offers", "1", "--keep-on-failure")
    assert res.returncode == 1
    (row,) = ledger_rows(deploy_home)
    assert row.status == "failed" and row.provider_id in vast.running_ids()
    assert f"deploy teardown {row.id}" in res.stderr
    assert unknown_running(vast, deploy_home) == set()
    assert deploy_cli("teardown", str(row.id)).returncode == 0
    assert vast.running_ids() == set()


def test_killed_between_create_and_running_then_status_and_teardown_all(vast_env, vast, deploy_home, deploy_cli):
    vast.stick_loading(1001)
    proc = subprocess.Popen(
        [str(DEPLOY_BIN), *box_only(["provision", "--gpu", "4090", "--ready-timeout", "60"])],
        env=vast_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = ledger_rows(deploy_home) if (deploy_home / "ledger.sqlite3").exists() else []
            if rows and rows[0].provider_id:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("provision never recorded an instance id")
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup handler can run
        proc.wait()
    assert vast.running_ids() == {rows[0].provider_id}
    status = deploy_cli("status", "--json")
    assert status.returncode == 0, status.stderr
    (entry,) = json.loads(status.stdout)
    assert entry["kind"] == "tracked" and entry["rental"]["provider_id"] == rows[0].provider_id
    assert entry["live"]["raw_status"] in ("provisioning", "created", "loading")  # null while pulling
    assert unknown_running(vast, deploy_home) == set()
    down = deploy_cli("teardown", "--all", "--yes")
    assert down.returncode == 0, down.stderr
    assert vast.running_ids() == set()
    assert [r.status for r in ledger_rows(deploy_home)] == ["destroyed"]


def test_killed_after_create_before_id_written_is_adopted_by_label(vast_env, vast, deploy_home, deploy_cli):
    """The narrowest crash window: intent row written, create done, id never recorded. The label finds it."""
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        intent = ledger.record_intent(
            attempt_id="deadbeef", provider="vast", label_prefix="csm-deploy", offer_id="1001"
        )
    iid = vast.create_direct(1001, intent.label)
    status = deploy_cli("status", "--json")
    assert status.returncode == 0, status.stderr
    (entry,) = json.loads(status.stdout)
    assert entry["kind"] == "tracked" and entry["rental"]["provider_id"] == str(iid)
    assert "adopted" in status.stderr
    assert deploy_cli("teardown", "--all", "--yes").returncode == 0
    assert vast.running_ids() == set()


def test_orphan_and_ghost_are_shown_and_teardown_all_ends_both(deploy_cli, vast, deploy_home):
    res = deploy_cli("provision", "--gpu", "4090")
    assert res.returncode == 0, res.stderr
    (row,) = ledger_rows(deploy_home)
    vast.instances[int(row.provider_id)]["_destroyed_at"] = time.time()  # vanished at the provider: a ghost
    orphan = vast.create_direct(2001, "csm-deploy:feedface:99")  # ours by label, unknown to the ledger
    stranger = vast.create_direct(3001, "someone-else")  # not ours: never touched
    status = json.loads(deploy_cli("status", "--json").stdout)
    kinds = sorted((e["kind"], (e["rental"] or {}).get("provider_id") or e["live"]["id"]) for e in status)
    assert kinds == [("ghost", row.provider_id), ("orphan", str(orphan))]
    down = deploy_cli("teardown", "--all", "--yes")
    assert down.returncode == 0, down.stderr
    assert vast.running_ids() == {str(stranger)}
    assert {r.status for r in ledger_rows(deploy_home)} == {"destroyed"}
    vast.instances[stranger]["_destroyed_at"] = time.time()


def test_garbage_listing_is_never_no_instances_status_shows_the_ledger_with_a_warning(deploy_cli, vast, deploy_home):
    res = deploy_cli("provision", "--gpu", "4090")
    assert res.returncode == 0, res.stderr
    (row,) = ledger_rows(deploy_home)
    for mode in ("html", "shape"):  # every mode is covered in-process by test_vast.py
        vast.garbage_listing(mode)
        status = deploy_cli("status", "--json")
        assert status.returncode == 1, (mode, status.stderr)  # the ledger's rows, and orphans may be hidden
        (entry,) = json.loads(status.stdout)
        assert entry["kind"] == "tracked" and entry["rental"]["id"] == row.id and entry["live"] is None
        line, error = status.stderr.strip().splitlines()
        assert line.startswith("› warning: vast: listing failed, showing the ledger only (vastai show instances:")
        assert error.startswith("Error: vast: listing failed") and "may be billing unseen" in error
    # teardown --all still ends what the ledger knows, then says it could not confirm the rest
    down = deploy_cli("teardown", "--all", "--yes")
    assert down.returncode == 1 and "run `deploy teardown --all` again" in down.stderr.splitlines()[-1]
    assert vast.running_ids() == set() and {r.status for r in ledger_rows(deploy_home)} == {"destroyed"}
    vast.garbage_listing(None)
    assert deploy_cli("teardown", "--all", "--yes").returncode == 0
    assert unknown_running(vast, deploy_home) == set()


def test_bad_api_key_is_one_line_error(deploy_cli, vast, deploy_home):
    res = deploy_cli("offers", "--gpu", "4090", env={"VAST_API_KEY": "wrong"})
    assert res.returncode == 1
    (line,) = res.stderr.strip().splitlines()
    assert "rejected the API key (HTTP 401" in line
    assert "wrong" not in line
    res = deploy_cli("provision", "--gpu", "4090", env={"VAST_API_KEY": "wrong"})
    assert res.returncode == 1 and "HTTP 401" in res.stderr
    assert vast.running_ids() == set()


def test_server_errors_on_create_destroy_nothing_unknown(deploy_cli, vast, deploy_home):
    """A 500 on create: the offer is skipped, and no box is left that the ledger does not know."""
    vast.fail("PUT", r"/api/v0/asks/1001/", 500)
    res = deploy_cli("provision", "--gpu", "4090", "--json")
    assert res.returncode == 0, res.stderr
    rows = ledger_rows(deploy_home)
    assert rows[0].status == "not_created" and rows[-1].status == "ready"
    assert unknown_running(vast, deploy_home) == set()
    deploy_cli("teardown", "--all", "--yes")


def test_local_provider_full_cycle(deploy_cli, deploy_home):
    res = deploy_cli("provision", "--provider", "local", "--json", env={"DEPLOY_LOCAL_RATE": "0.1"})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["provider"] == "local" and out["status"] == "ready" and out["rate_usd_h"] == 0.1
    status = json.loads(deploy_cli("status", "--json").stdout)
    assert [e["kind"] for e in status] == ["tracked"]
    assert deploy_cli("teardown", str(out["id"])).returncode == 0
    assert json.loads(deploy_cli("status", "--json").stdout) == []
