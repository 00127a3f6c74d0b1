"""The box's watchdog (`csm-runtime watchdog`, csm_runtime/watchdog.py) ends its own rental with the laptop out of the
picture: on the strict vast.ai emulator, with the instance-scoped key the rental's onstart saved on the box, behind an
edge that refuses urllib's default User-Agent (Cloudflare's error 1010).

Each test provisions the real runtime (image mode: the box's "image" ships this checkout's environment as /opt/venv;
tiny-random; the server behind an SSH tunnel on a free port). The watchdog must arm before provision goes on (vast
takes its key), or the box is destroyed. Then the box ends itself — idle, past the spend or hours cap that `deploy
provision` was given, its server killed — and the instance is destroyed in the emulator, `deploy status` closes the
row with the reason, and `deploy cost` ends where vast's billing ended, within 1 % of the emulator's own record.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from deploy.ledger import Ledger
from deploy.remote.host import free_port

IDLE_S = 30  # the idle clock starts at the server's first answer, so a slow load on a busy machine does not race it


@pytest.fixture
def vast(vast_image_boxes):
    vast_image_boxes.realism = vast_image_boxes.realism.with_options(user_agent_edge=True)
    return vast_image_boxes


def provision(deploy_cli, *extra: str, ok: bool = True):
    res = deploy_cli(
        "provision",
        "--runtime",
        "--gpu",
        "4090",
        "--max-offers",
        "1",
        "--image",
        "example/csm-runtime:test",
        "--model",
        "tiny-random",
        "--no-autotune",
        "--tunnel",
        "--server-port",
        str(free_port()),
        "--runtime-timeout",
        "240",
        "--json",
        *extra,
        timeout=400,
    )
    if not ok:
        return res
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def wait_destroyed(vast, iid: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while str(iid) in vast.running_ids():
        assert time.monotonic() < deadline, f"the box's watchdog never destroyed instance {iid}"
        time.sleep(0.5)


def closed_by_status(deploy_cli, deploy_home, vast, iid: int):
    status = deploy_cli("status", "--json")
    assert status.returncode == 0, status.stderr[-2000:]
    (entry,) = json.loads(status.stdout)  # closed as it is shown: nothing else open, nothing unknown
    assert entry["kind"] == "ended" and entry["rental"]["provider_id"] == str(iid)
    assert "the box destroyed itself" in status.stderr
    assert json.loads(deploy_cli("status", "--json").stdout) == []
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        (row,) = ledger.rentals()
    assert row.status == "gone" and "watchdog" in row.reason
    bill = vast.billing(iid)
    assert row.ended_at == pytest.approx(bill["destroyed_at"], abs=0.01)  # vast's end of billing, not "now"
    cost = deploy_cli("cost", "--json")
    (line,) = json.loads(cost.stdout)["lines"]
    assert line["usd"] == pytest.approx(bill["total_usd"], rel=0.01)
    return row


def test_an_idle_box_destroys_itself_and_status_closes_the_row(deploy_cli, vast, deploy_home):
    out = provision(deploy_cli, "--idle-destroy", f"{IDLE_S}s")
    iid = int(out["provider_id"])
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        (row,) = ledger.rentals()
    assert row.meta["watchdog"]["running"]  # armed: vast took the key the onstart saved
    status = deploy_cli("status")  # the watchdog's own state, read from the box over SSH
    assert f"rental {row.id}: watchdog armed: idle 0 of 0.5 min, $0." in status.stdout, status.stdout
    wait_destroyed(vast, iid)
    state = json.loads((vast.box(iid).home / "csm-deploy" / "watchdog.json").read_text())
    # "destroying" is written before the call; the container may be gone before "destroyed" is (as on vast)
    assert state["action"] in ("destroying", "destroyed") and "no request for" in state["reason"]
    assert {a[2] for a in vast.agents if a[3] == vast.instances[iid]["_api_key"]} == {"csm-runtime/0.1.0"}
    closed_by_status(deploy_cli, deploy_home, vast, iid)


def test_a_box_whose_server_was_killed_destroys_itself(deploy_cli, vast, deploy_home):
    out = provision(deploy_cli, "--idle-destroy", f"{IDLE_S}s")
    iid = int(out["provider_id"])
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        server_pid = ledger.rentals()[0].meta["server_pid"]
    os.killpg(server_pid, signal.SIGKILL)  # the box's server group (setsid): a crash no handler sees
    wait_destroyed(vast, iid)
    state = json.loads((vast.box(iid).home / "csm-deploy" / "watchdog.json").read_text())
    # "destroying" is written before the call; the container may be gone before "destroyed" is (as on vast)
    assert state["action"] in ("destroying", "destroyed") and "has not answered" in state["reason"]
    closed_by_status(deploy_cli, deploy_home, vast, iid)


@pytest.mark.parametrize(
    ("cap", "reason"),
    [(("--max-spend", "0.0001"), "its cap is $0.0001"), (("--max-hours", "0.0005"), "its cap is 0.0005 h")],
    ids=["max-spend", "max-hours"],
)
def test_a_box_provisioned_with_a_cap_destroys_itself_at_the_cap(deploy_cli, vast, deploy_home, cap, reason):
    """The cap goes through `deploy provision` to the box (idle off: nothing else could end it). It is reached as
    soon as the watchdog looks; vast refuses its destroys (the edge's 403) until provision has finished, so the
    provision is not raced, and status shows the refused tries; then vast takes one and the box is gone."""
    vast.fail("DELETE", r"^/api/v0/instances/\d+/$", 403, times=-1, msg="error code: 1010")
    out = provision(deploy_cli, "--idle-destroy", "off", *cap)
    iid = int(out["provider_id"])
    state_file = vast.box(iid).home / "csm-deploy" / "watchdog.json"
    deadline = time.monotonic() + 60
    while json.loads(state_file.read_text()).get("destroy_tries", 0) < 1:
        assert time.monotonic() < deadline, state_file.read_text()
        time.sleep(0.2)
    status = deploy_cli("status", "--json")
    (entry,) = json.loads(status.stdout)
    line = entry["watchdog"]["line"]
    assert line.startswith("watchdog destroying the box: ") and reason in line, line
    assert "destroy refused (try " in line and "HTTP 403: error code: 1010" in line, line
    vast.faults.clear()
    wait_destroyed(vast, iid)
    state = json.loads(state_file.read_text())
    # at least one refused try is on record; "destroyed" (and the last try's number) may not be, if the container
    # went before the watchdog could write it, as on vast
    assert state["action"] in ("destroying", "destroyed") and reason in state["reason"] and state["destroy_tries"] >= 1
    closed_by_status(deploy_cli, deploy_home, vast, iid)


def test_a_box_whose_instance_key_vast_refuses_is_destroyed_by_the_provision(
    deploy_cli, vast, deploy_home, monkeypatch
):
    """A watchdog that cannot arm leaves nobody to end the box: provision fails at `start` and destroys it."""
    create = vast._create

    def create_then_revoke(offer_id, body):  # the box keeps the key it was given; vast no longer takes it
        iid = create(offer_id, body)
        vast.instances[iid]["_api_key"] = "revoked-" + vast.instances[iid]["_api_key"]
        return iid

    monkeypatch.setattr(vast, "_create", create_then_revoke)
    res = provision(deploy_cli, "--max-spend", "5", ok=False)
    assert res.returncode != 0
    assert "the box's watchdog did not arm (vast refused the instance key: HTTP 401: Invalid user key)" in res.stderr
    assert vast.running_ids() == set()
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        (row,) = ledger.rentals()
        kinds = [e["kind"] for e in ledger.events(row.id)]
    assert not row.is_open and "watchdog did not arm" in (row.reason or "")
    assert "watchdog-failed" in kinds and not row.meta["watchdog"]["running"]
