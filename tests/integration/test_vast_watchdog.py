"""The box's watchdog (`csm-runtime watchdog`, csm_runtime/watchdog.py) ends its own rental with the laptop out of the
picture: on the strict vast.ai emulator, with the instance-scoped key the rental's onstart saved on the box.

Each test provisions the real runtime (image mode: the box's "image" ships this checkout's environment as /opt/venv;
tiny-random; the server behind an SSH tunnel on a free port), lets the box end itself — idle, past a spend cap, its
server killed — and checks that the instance is destroyed in the emulator, that `deploy status` closes the row with
the reason, and that the cost ends where vast's billing ended, within 1 % of the emulator's own record.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time

import pytest

from deploy.ledger import Ledger
from deploy.remote.host import free_port

IDLE_S = 30  # long enough for the server to load tiny-random before the idle clock runs out on a loaded machine


@pytest.fixture
def vast(vast_image_boxes):
    return vast_image_boxes


def provision(deploy_cli, *extra: str) -> dict:
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
        assert ledger.rentals()[0].meta["watchdog"]["running"]  # the onstart saved the key it needs
    wait_destroyed(vast, iid)
    state = json.loads((vast.box(iid).home / "csm-deploy" / "watchdog.json").read_text())
    assert state["action"] == "destroyed" and "no request for" in state["reason"]
    closed_by_status(deploy_cli, deploy_home, vast, iid)


def test_a_box_whose_server_was_killed_destroys_itself(deploy_cli, vast, deploy_home):
    out = provision(deploy_cli, "--idle-destroy", f"{IDLE_S}s")
    iid = int(out["provider_id"])
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        server_pid = ledger.rentals()[0].meta["server_pid"]
    os.killpg(server_pid, signal.SIGKILL)  # the box's server group (setsid): a crash no handler sees
    wait_destroyed(vast, iid)
    state = json.loads((vast.box(iid).home / "csm-deploy" / "watchdog.json").read_text())
    assert state["action"] == "destroyed" and "has not answered" in state["reason"]
    closed_by_status(deploy_cli, deploy_home, vast, iid)


def test_a_box_past_its_spend_cap_destroys_itself(deploy_cli, vast, deploy_home):
    """The cap is checked against the box's whole life: a watchdog started with a cap the box has already spent
    destroys at its first look (provision's own watchdog is replaced, so the cap does not race the provision)."""
    out = provision(deploy_cli)
    iid = int(out["provider_id"])
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        (row,) = ledger.rentals()
    os.kill(row.meta["watchdog"]["pid"], signal.SIGKILL)
    box = vast.box(iid)
    command = [
        "/opt/venv/bin/csm-runtime",
        "watchdog",
        "--server",
        f"http://127.0.0.1:{row.meta['port']}",
        "--token-file",
        "csm-deploy/token",
        "--state-file",
        "csm-deploy/watchdog.json",
        "--max-spend",
        "0.0001",
        "--rate",
        f"{row.rate_usd_h:g}",
        "--started-at",
        f"{row.started_at:.3f}",
        "--api-url",
        vast.url,
        "--poll",
        "1",
    ]
    subprocess.Popen(
        [str(box.root / "enter"), "/bin/sh", "-c", " ".join(shlex.quote(a) for a in command) + " >wd.log 2>&1"],
        start_new_session=True,
        env={"HOME": "/root", "PATH": os.environ["PATH"]},  # the box's own environment, as its sessions have it
    )
    try:
        wait_destroyed(vast, iid, timeout=60)
    except AssertionError:
        raise AssertionError((box.home / "wd.log").read_text()[-2000:]) from None
    state = json.loads((box.home / "csm-deploy" / "watchdog.json").read_text())
    assert state["action"] == "destroyed" and "its cap is $0.0001" in state["reason"]
    closed_by_status(deploy_cli, deploy_home, vast, iid)
