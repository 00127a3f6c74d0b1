"""The one way to stop what `start_detached` started (deploy/remote/detached.py), on real processes of this machine
through `LocalHost`: the pid file's process is signalled only while it is still the one that was started."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from deploy.remote.detached import stop_detached
from deploy.remote.local_host import LocalHost


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def host(tmp_path):
    return LocalHost(tmp_path / "box")


@pytest.fixture
def stranger():
    """A process this test owns, started outside `start_detached`: what a reused pid would be."""
    procs: list[subprocess.Popen] = []

    def start(*, own_group: bool) -> int:
        procs.append(subprocess.Popen(["sleep", "30"], start_new_session=own_group))
        return procs[-1].pid

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_stops_what_it_started(host):
    pid = host.start_detached("sleep 30", name="svc")
    pid_file = str(host.root / ".csm-deploy-run/svc.pid")
    assert stop_detached(host, pid_file, pid=pid, grace_s=5) == "stopped"
    assert not _alive(pid)
    assert not os.path.exists(pid_file)
    assert stop_detached(host, pid_file, pid=pid) == "not-running"


def test_kills_a_group_that_ignores_sigterm(host):
    pid = host.start_detached("trap '' TERM; sleep 30 & wait", name="stubborn")
    time.sleep(0.3)  # the trap is set before SIGTERM comes
    assert stop_detached(host, str(host.root / ".csm-deploy-run/stubborn.pid"), grace_s=0.4) == "killed"
    assert not _alive(pid)


def test_a_pid_file_naming_another_pid_is_left_alone(host):
    pid = host.start_detached("sleep 30", name="svc")
    pid_file = str(host.root / ".csm-deploy-run/svc.pid")
    assert stop_detached(host, pid_file, pid=pid + 100000) == "not-running"
    assert _alive(pid) and os.path.exists(pid_file)
    assert host.stop_all() == [pid]


def test_a_reused_pid_that_leads_no_group_is_not_signalled(host, stranger):
    pid = stranger(own_group=False)  # shares this test's process group: a kill of its group would end pytest
    pid_file = host.root / ".csm-deploy-run/svc.pid"
    pid_file.parent.mkdir()
    pid_file.write_text(f"{pid}\n")
    assert stop_detached(host, str(pid_file)) == "not-running"
    assert _alive(pid)
    assert not pid_file.exists()  # stale: it names no process of ours


def test_a_reused_pid_started_after_the_pid_file_is_not_signalled(host, stranger):
    pid = stranger(own_group=True)  # a group leader, as the server was, but started after the file was written
    pid_file = host.root / ".csm-deploy-run/svc.pid"
    pid_file.parent.mkdir()
    pid_file.write_text(f"{pid}\n")
    past = time.time() - 3600
    os.utime(pid_file, (past, past))
    assert stop_detached(host, str(pid_file)) == "not-running"
    assert _alive(pid)
    assert host.stop_all() == []
