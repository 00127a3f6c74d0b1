"""Signals that end `deploy provision`: the real console script against the vast emulator (vast.ai itself cannot be
reached here) through the real vastai CLI, the box stuck loading so the signal lands in `wait_running`, after rent.

SIGINT goes to the command's whole process group, as a terminal's Ctrl-C does (the vastai calls it runs must not get
it); SIGTERM to its pid, as `kill` does; SIGHUP comes from the kernel when the command's controlling terminal (a pty)
is closed. Each one: the rental is destroyed by id, its row closed, the exit code is 128 + the signal and the last
line says nothing is left billing. A second Ctrl-C during the rollback is reported and the destroy goes on; a third
abandons it and names the teardown that ends what may bill.
"""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import subprocess
import termios
import time

import pytest

from tests.conftest import DEPLOY_BIN
from tests.fakes.ledger_view import has_event
from tests.fakes.ledger_view import ledger_rows as rows

ARGS = ["provision", "--gpu", "4090", "--max-offers", "1", "--no-runtime"]


def wait_for(proc: subprocess.Popen, home, kind: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not has_event(home, kind):
        if proc.poll() is not None:
            raise AssertionError(f"provision ended before {kind}: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, f"no {kind} within {timeout:.0f} s"
        time.sleep(0.02)


def send(proc: subprocess.Popen, sig: int) -> None:
    """SIGINT and SIGHUP reach the terminal's foreground group, SIGTERM the one pid `kill` names."""
    if sig == signal.SIGTERM:
        proc.send_signal(sig)
    else:
        os.killpg(proc.pid, sig)


@pytest.fixture
def provision(vast, vast_env):
    """Start the provision with every offer stuck loading (it waits in `wait_running` until a signal ends it)."""
    for offer in list(vast.offers):
        vast.stick_loading(offer)
    env = {**vast_env, "DEPLOY_READY_TIMEOUT_S": "600"}
    started: list[subprocess.Popen] = []

    def start(**popen) -> subprocess.Popen:
        streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
        proc = subprocess.Popen([str(DEPLOY_BIN), *ARGS], env=env, text=True, start_new_session=True, **streams)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def last_line(err: str) -> str:
    return [line for line in err.splitlines() if line.strip()][-1]


def test_sigterm_after_rent_destroys_the_rental_and_exits_143(provision, vast, deploy_home):
    proc = provision()
    wait_for(proc, deploy_home, "step:wait_running")
    send(proc, signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    (row,) = rows(deploy_home)
    assert row.provider_id is not None and row.status == "destroyed", (row.status, err[-3000:])
    assert vast.running_ids() == set()
    assert last_line(err) == f"interrupted (SIGTERM): rental {row.id} destroyed, nothing left billing"


def _controlling_terminal() -> None:
    """In the child, after its setsid: the pty on stdin becomes its controlling terminal, as a login shell's is."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_a_closed_terminal_hangs_up_the_provision_and_it_still_destroys(provision, vast, deploy_home):
    """stdin and stdout on a pty that is the command's controlling terminal, stderr on a pipe (as `2>log`): closing
    the pty's master makes the kernel send SIGHUP, and every write to the terminal fails from then on."""
    master, slave = pty.openpty()
    try:
        proc = provision(stdin=slave, stdout=slave, preexec_fn=_controlling_terminal)
    finally:
        os.close(slave)
    try:
        wait_for(proc, deploy_home, "step:wait_running")
    finally:
        os.close(master)  # the terminal goes away
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 129, err[-3000:]
    (row,) = rows(deploy_home)
    assert row.provider_id is not None and row.status == "destroyed", (row.status, err[-3000:])
    assert vast.running_ids() == set()
    assert last_line(err) == f"interrupted (SIGHUP): rental {row.id} destroyed, nothing left billing"


def test_ctrl_c_while_the_create_is_in_flight_lets_it_finish_then_destroys_its_box(provision, vast, deploy_home):
    """The emulator holds the create until the test releases it, so Ctrl-C reaches the terminal's group while
    `vastai create` waits for its answer: that child must not die of it (its answer is the id of what it rented)."""
    vast.hold_creates()
    try:
        proc = provision()
        assert vast.create_hold.wait_arrived(1, timeout=90), "no create reached vast"
        send(proc, signal.SIGINT)
        time.sleep(0.5)  # the signal is handled while the create is still held
    finally:
        vast.release_creates()
    _out, err = proc.communicate(timeout=120)
    (row,) = rows(deploy_home)
    assert proc.returncode == 130, err[-3000:]
    assert row.provider_id is not None and row.status == "destroyed", (row.status, err[-3000:])
    assert vast.running_ids() == set() and len(vast.instances) == 1
    assert last_line(err) == f"interrupted (SIGINT): rental {row.id} destroyed, nothing left billing"


def test_a_second_ctrl_c_during_the_rollback_is_reported_and_the_destroy_completes(provision, vast, deploy_home):
    vast.destroy_fails(times=1, status=500)  # the destroy is tried again (paced): seconds for the second Ctrl-C
    proc = provision()
    wait_for(proc, deploy_home, "step:wait_running")
    send(proc, signal.SIGINT)
    wait_for(proc, deploy_home, "destroying")
    send(proc, signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    (row,) = rows(deploy_home)
    doing = f"destroying rental {row.id} (vast instance {row.provider_id})"
    assert f"rollback in progress: {doing}; press Ctrl-C again to abandon it" in err, err[-3000:]
    assert proc.returncode == 130, err[-3000:]
    assert row.status == "destroyed" and vast.running_ids() == set()
    assert last_line(err) == f"interrupted (SIGINT): rental {row.id} destroyed, nothing left billing"


def test_a_third_ctrl_c_abandons_the_rollback_and_names_the_teardown(provision, vast, vast_env, deploy_home):
    vast.destroy_fails(times=-1, status=500)  # the destroy cannot succeed: only the third Ctrl-C ends the command
    proc = provision()
    wait_for(proc, deploy_home, "step:wait_running")
    send(proc, signal.SIGINT)
    wait_for(proc, deploy_home, "destroying")
    send(proc, signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None  # the second one did not stop the rollback
    send(proc, signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    (row,) = rows(deploy_home)
    assert proc.returncode == 130, err[-3000:]
    assert row.is_open and vast.running_ids() == {row.provider_id}  # what the line says may bill does
    assert last_line(err) == (
        f"interrupted (SIGINT): rollback abandoned: rental {row.id} (vast instance {row.provider_id}) may be left "
        f"billing: run `deploy teardown {row.id}`"
    )
    vast.faults.clear()
    down = subprocess.run([str(DEPLOY_BIN), "teardown", str(row.id), "--yes"], env=vast_env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert down.returncode == 0, down.stderr[-2000:]
    assert vast.running_ids() == set() and not rows(deploy_home)[0].is_open
