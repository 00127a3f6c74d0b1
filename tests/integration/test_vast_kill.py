"""`kill -9` of `deploy provision` at every step boundary, then `deploy status` and `deploy teardown --all --yes`:
whatever the emulator (strict: vast as it is) runs is named by an open ledger row, and nothing runs and no row is
open at the end.

The kill comes when the ledger records that a step begins (`step:<name>`, written before the step runs): the steps
before it are done. Only `deploy` is killed, as `kill -9 <pid>` does: a `vastai create` it started lives on and may
rent after the kill, so that id never reaches the ledger; the label the row gave the create call names the box until
`status` adopts it. Box steps run with `--no-runtime`; the runtime steps with image mode on a box whose "image" ships
this checkout's environment as /opt/venv (nothing to build or install), tiny-random, no sweep, the server behind an
SSH tunnel on a free port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from deploy.remote.host import free_port
from tests.conftest import DEPLOY_BIN, unknown_running
from tests.fakes.ledger_view import has_event
from tests.fakes.ledger_view import ledger_rows as rows

BOX_STEPS = ("rent", "wait_running", "connect", "check")
RUNTIME_STEPS = ("push", "install", "autotune", "start", "ready")


@pytest.fixture
def vast(vast_image_boxes):
    return vast_image_boxes


def began(home, step: str) -> bool:
    """Whether the ledger says `step` began."""
    return has_event(home, f"step:{step}")


def untracked_running(vast, home) -> set[str]:
    """Running instances that no open ledger row names, by id or by the label it gave the create call."""
    open_rows = [r for r in rows(home) if r.is_open]
    ids, labels = {r.provider_id for r in open_rows}, {r.label for r in open_rows}
    with vast.lock:
        running = {str(i): inst.get("label") for i, inst in vast.instances.items() if inst["_destroyed_at"] is None}
    return {i for i, label in running.items() if i not in ids and label not in labels}


def left_behind(group: int, home) -> list[int]:
    """Processes the killed provision left: its process group, and the `vastai` calls it started in groups of their
    own (so a terminal's signals do not kill a create in flight), known by the DEPLOY_HOME they inherited."""
    mark = f"DEPLOY_HOME={home}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                pgid = int(f.read().rsplit(b")", 1)[1].split()[2])
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                vastai = b"vastai" in f.read()
        except OSError:
            continue
        if pgid == group or (vastai and mark in env):
            pids.append(int(entry))
    return pids


def wait_for_orphans(group: int, home, timeout: float = 60) -> None:
    """Wait until no process the killed provision left is running (a `vastai` call it started finishes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not left_behind(group, home):
            return
        time.sleep(0.05)
    for pid in left_behind(group, home):
        os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"processes of the killed provision still ran after {timeout:.0f} s")


def provision_args(step: str) -> list[str]:
    args = ["provision", "--gpu", "4090", "--max-offers", "1"]
    if step in BOX_STEPS:
        return [*args, "--no-runtime"]
    runtime = ["--runtime", "--image", "example/csm-runtime:test", "--model", "tiny-random", "--no-autotune"]
    return [*args, *runtime, "--tunnel", "--server-port", str(free_port()), "--runtime-timeout", "120"]


@pytest.mark.parametrize("step", BOX_STEPS + RUNTIME_STEPS)
def test_kill_9_at_a_step_boundary_then_status_and_teardown_all_leave_nothing(step, vast, vast_env, deploy_home):
    # every process the killed provision left is waited for below, so no create lands after that: a window of 0
    vast_env = {**vast_env, "DEPLOY_VAST_CREATE_WINDOW_S": "0"}
    proc = subprocess.Popen(
        [str(DEPLOY_BIN), *provision_args(step)],
        env=vast_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the orphans it leaves can be waited for
    )
    try:
        deadline = time.monotonic() + 240
        while not began(deploy_home, step):
            if proc.poll() is not None:
                raise AssertionError(f"provision ended before {step}: {proc.communicate()[1].decode()[-3000:]}")
            assert time.monotonic() < deadline, f"{step} never began"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no handler runs: only the ledger knows what was rented
        proc.communicate()
        wait_for_orphans(proc.pid, deploy_home)
    assert untracked_running(vast, deploy_home) == set()

    status = subprocess.run([str(DEPLOY_BIN), "status", "--json"], env=vast_env, capture_output=True, text=True)
    assert status.returncode == 0, status.stderr[-2000:]
    shown = {(e["rental"] or {}).get("provider_id") or (e["live"] or {}).get("id") for e in json.loads(status.stdout)}
    assert vast.running_ids() <= shown and unknown_running(vast, deploy_home) == set()
    known = {r.provider_id for r in rows(deploy_home) if r.provider_id}
    assert {str(i) for i in vast.instances} <= known  # every instance ever created is in the ledger, by id once adopted

    down = subprocess.run([str(DEPLOY_BIN), "teardown", "--all", "--yes"], env=vast_env, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr[-2000:]
    assert vast.running_ids() == set()
    assert all(not r.is_open for r in rows(deploy_home))


def test_kill_9_while_the_create_is_in_flight_teardown_keeps_the_row_until_the_box_lands(vast, vast_env, deploy_home):
    """The window is made, not hoped for: the emulator holds the create until the test releases it, so the kill lands
    while `vastai create` waits for its answer. Until the create could have landed, status and teardown say the
    outcome is unknown and exit 1 with the row open; the box that lands later is adopted by its label and destroyed."""
    vast.hold_creates()
    proc = subprocess.Popen(
        [str(DEPLOY_BIN), *provision_args("rent")],
        env=vast_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        try:
            arrived = vast.create_hold.wait_arrived(1, timeout=120)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            err = proc.communicate()[1].decode()
        assert arrived, f"no create reached vast: {err[-2000:]}"
        assert vast.creates_in_flight == 1 and vast.instances == {}  # the kill landed inside the create's window
        (row,) = rows(deploy_home)
        assert row.is_open and row.provider_id is None

        status = subprocess.run([str(DEPLOY_BIN), "status", "--json"], env=vast_env, capture_output=True, text=True)
        assert status.returncode == 1 and "create outcome unknown" in status.stderr, status.stderr[-2000:]
        (entry,) = json.loads(status.stdout)
        assert entry["kind"] == "unknown" and entry["create_outcome_unknown_until"] > time.time()
        down = subprocess.run(
            [str(DEPLOY_BIN), "teardown", "--all", "--yes"], env=vast_env, capture_output=True, text=True
        )
        assert down.returncode == 1 and "create outcome unknown" in down.stderr, down.stderr[-2000:]
        one = subprocess.run([str(DEPLOY_BIN), "teardown", str(row.id)], env=vast_env, capture_output=True, text=True)
        assert one.returncode == 1 and "create outcome unknown" in one.stderr, one.stderr[-2000:]
        assert [r.is_open for r in rows(deploy_home)] == [True]  # not closed as "not created"
    finally:
        vast.release_creates()
    wait_for_orphans(proc.pid, deploy_home)  # the create the killed provision left now goes through
    (iid,) = vast.running_ids()

    down = subprocess.run([str(DEPLOY_BIN), "teardown", "--all", "--yes"], env=vast_env, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr[-2000:]
    assert vast.running_ids() == set()
    (row,) = rows(deploy_home)
    assert row.status == "destroyed" and row.provider_id == iid
