"""`deploy status`'s watchdog line (deploy/watchdog_status.py): the state file the box's watchdog keeps, read over
real SSH (the loopback sshd) with the host key pinned in the ledger; a box that refuses the connection, or accepts it
and never speaks, reads "unknown (box unreachable)" within the read's deadline. Only the SSH side is exercised here:
the file itself is the one csm_runtime/watchdog_state.py writes."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from csm_runtime.watchdog_state import State
from deploy.ledger import Ledger
from deploy.provision.box_steps import ensure_ssh_key
from deploy.settings import load_settings
from deploy.watchdog_status import UNREACHABLE, describe, watchdog_report
from tests.fakes.vast import closed_port


@pytest.fixture
def settings(sshd, deploy_home, monkeypatch):
    monkeypatch.setenv("DEPLOY_SSH_USER", sshd.user)
    s = load_settings()
    public = ensure_ssh_key(s)
    with open(sshd.authorized_keys, "a") as f:
        f.write(public.strip() + "\n")
    return s


def rental(ledger: Ledger, host: str, port: int, host_key: str, state_file: Path):
    row = ledger.record_intent(attempt_id="a1", provider="vast", label_prefix="csm-deploy", rate_usd_h=0.4)
    ledger.record_rented(row.id, str(7_000_000 + row.id))
    ledger.record_connection(row.id, ssh_host=host, ssh_port=port, ssh_user=None)
    ledger.pin_host_key(row.id, host_key)
    ledger.update_meta(row.id, watchdog={"limits": "idle 60 min", "running": True, "state_file": str(state_file)})
    return SimpleNamespace(kind="tracked", rental=ledger.require(row.id), box=object())


def armed_state(path: Path) -> None:
    limits = {"idle_s": 3600.0, "max_hours": None, "max_spend_usd": 5.0, "rate_usd_h": 0.4, "started_at": 0.0}
    state = State(path, "7000001", limits, poll_s=15.0, armed=True, action="watching")
    state.save(idle_s=725.0, spent_usd=0.41, hours=1.02, last_check=time.time())


def test_status_reads_each_boxs_state_and_says_unknown_for_a_box_it_cannot_reach(sshd, settings, tmp_path):
    armed_state(tmp_path / "watchdog.json")
    silent = socket.socket()  # accepts TCP, never says a word: an SSH banner that never comes
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    with Ledger(settings.ledger_path) as ledger:
        reachable = rental(ledger, sshd.host, sshd.port, sshd.host_key_pub, tmp_path / "watchdog.json")
        refused = rental(ledger, "127.0.0.1", closed_port(), sshd.host_key_pub, tmp_path / "watchdog.json")
        mute = [
            rental(ledger, "127.0.0.1", silent.getsockname()[1], sshd.host_key_pub, tmp_path / "watchdog.json")
            for _ in range(6)
        ]
        report = watchdog_report([reachable, refused, *mute], settings, ledger, timeout_s=1.0)
    silent.close()
    assert report[reachable.rental.id]["line"] == "watchdog armed: idle 12 of 60 min, $0.41 of $5.00"
    assert report[reachable.rental.id]["state"]["armed"] is True
    for entry in [refused, *mute]:
        assert report[entry.rental.id] == {"line": UNREACHABLE, "state": None}


def test_what_the_line_says_while_destroying_refused_or_silent():
    limits = {"idle_s": 1800.0, "max_hours": 8.0, "max_spend_usd": None, "rate_usd_h": 0.4, "started_at": 0.0}
    base = {"armed": True, "action": "watching", "limits": limits, "poll_s": 15.0, "last_check": 1000.0}
    line = describe({**base, "idle_s": 60.0, "spent_usd": 0.8, "hours": 2.0}, now=1001.0)
    assert line == "watchdog armed: idle 1 of 30 min, $0.80 spent, 2.0 of 8 h"
    assert "is it still running?" in describe({**base, "idle_s": 0.0}, now=2000.0)
    destroying = {
        **base,
        "action": "destroying",
        "reason": "the box ran 8.00 h, its cap is 8 h",
        "last_error": "destroy refused (try 2): HTTP 403: error code: 1010",
        "next_try_at": 1010.0,
    }
    assert describe(destroying, now=1000.0) == (
        "watchdog destroying the box: the box ran 8.00 h, its cap is 8 h; "
        "destroy refused (try 2): HTTP 403: error code: 1010; next try in 10 s"
    )
    refused = {"armed": False, "action": "refused", "last_error": "vast refused the instance key: HTTP 401"}
    assert describe(refused, now=0) == "watchdog NOT armed: vast refused the instance key: HTTP 401"
