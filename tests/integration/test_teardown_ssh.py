"""`deploy teardown` on an `ssh` rental stops the server provision started there (a real tiny-random csm-runtime on
the loopback sshd, tests/fakes/ssh_rental.py) before closing the row: the provider has nothing to destroy."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from deploy.ledger import Ledger
from deploy.settings import load_settings
from tests.conftest import DEPLOY_BIN
from tests.fakes.ssh_rental import running, start_ssh_rental, stop_group, wait_gone
from tests.fakes.vast_emulator import closed_port


@pytest.fixture
def ssh_server(sshd, tmp_path):
    server = start_ssh_rental(sshd, tmp_path, ready=False)  # stopping does not need the model loaded
    yield server
    stop_group(server.pid)


def _teardown(deploy_home, rid: int):
    return subprocess.run(
        [str(DEPLOY_BIN), "teardown", str(rid), "--json"],
        env={**os.environ, "DEPLOY_HOME": str(deploy_home)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _row(rid: int):
    with Ledger(load_settings().ledger_path) as ledger:
        events = [r["detail"] for r in ledger.db.execute("SELECT detail FROM events WHERE kind='server_stopped'")]
        return ledger.get(rid), events


def test_teardown_stops_the_server_group_then_releases_the_row(ssh_server, deploy_home, sshd):
    assert running(ssh_server.pid)
    pid_file = Path(os.path.expanduser(f"~{sshd.user}")) / ssh_server.pid_file
    assert pid_file.read_text().strip() == str(ssh_server.pid)
    res = _teardown(deploy_home, ssh_server.id)
    assert res.returncode == 0, res.stderr
    (closed,) = json.loads(res.stdout)["closed"]
    assert closed["status"] == "released" and closed["server"] == f"pid {ssh_server.pid} stopped"
    assert wait_gone(ssh_server.pid, 5)
    assert not pid_file.exists()
    row, events = _row(ssh_server.id)
    assert row.status == "released" and events == [f"pid {ssh_server.pid}: stopped"]


def test_a_server_already_gone_is_reported_and_nothing_else_is_signalled(ssh_server, deploy_home):
    stop_group(ssh_server.pid)
    res = _teardown(deploy_home, ssh_server.id)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["closed"][0]["server"] == f"pid {ssh_server.pid} not-running"
    assert _row(ssh_server.id)[0].status == "released"


def test_an_unreachable_box_keeps_the_row_open_and_names_the_kill(ssh_server, deploy_home, sshd):
    with Ledger(load_settings().ledger_path) as ledger:
        ledger.record_connection(ssh_server.id, ssh_host=sshd.host, ssh_port=closed_port(), ssh_user=sshd.user)
    res = _teardown(deploy_home, ssh_server.id)
    assert res.returncode == 1
    assert "could not" in res.stderr and f"(pid {ssh_server.pid})" in res.stderr
    assert _row(ssh_server.id)[0].is_open


def test_teardown_deletes_the_hub_token_provision_put_on_the_box(ssh_server, deploy_home, tmp_path):
    token = tmp_path / "box-dir" / "hf-token"  # as put_hub_token leaves it: the box dir's hf-token, 0600
    token.write_text("hf_not_a_real_token\n")
    token.chmod(0o600)
    with Ledger(load_settings().ledger_path) as ledger:
        ledger.update_meta(ssh_server.id, hf_token="HF_TOKEN", hf_token_file=str(token))
    res = _teardown(deploy_home, ssh_server.id)
    assert res.returncode == 0, res.stderr
    assert not token.exists()
    with Ledger(load_settings().ledger_path) as ledger:
        removed = [r["detail"] for r in ledger.db.execute("SELECT detail FROM events WHERE kind='hub_token_removed'")]
    assert removed == [str(token)]
