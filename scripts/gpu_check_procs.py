"""A command under a time limit whose every process ends with it: the command runs in a session of its own, and on
its limit (or when this process is told to stop) every process group of its tree is ended, SIGTERM then SIGKILL.

Why not `timeout`: it signals its own process group, and autotune's delivery check starts its server in a session of
its own (as a box does), so the server outlived the command and kept the GPU while the next part ran."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Bounded:
    returncode: int | None  # None when the limit ended it
    timed_out: bool
    groups_ended: tuple[int, ...] = ()


def _stat(pid: str) -> tuple[int, int] | None:
    """(parent pid, process group) of a live process, from /proc/PID/stat (the name may hold spaces and ')')."""
    try:
        text = open(f"/proc/{pid}/stat").read()  # noqa: SIM115 - one short read
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[1]), int(fields[2])) if fields[0] != "Z" else None


def tree_groups(pid: int) -> list[int]:
    """The process groups of `pid` and all its descendants (its own first)."""
    table = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(p))}
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    groups, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            if table[child][1] not in groups:
                groups.append(table[child][1])
    return groups


def _signal_groups(groups: list[int], sig: int) -> list[int]:
    alive = []
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)
            alive.append(group)
    return alive


def end_tree(proc: subprocess.Popen, grace_s: float = 5.0) -> tuple[int, ...]:
    """SIGTERM every group of `proc`'s tree (found before anything dies, so orphans are not lost), SIGKILL what is
    left after `grace_s`. Returns the groups signalled."""
    groups = tree_groups(proc.pid)
    _signal_groups(groups, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    while time.monotonic() < deadline and any(_live_members(g) for g in groups):
        time.sleep(0.1)
    _signal_groups(groups, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    deadline = time.monotonic() + grace_s  # SIGKILL is delivered, not awaited: see them gone
    while time.monotonic() < deadline and any(_live_members(g) for g in groups):
        time.sleep(0.05)
    return tuple(groups)


def _live_members(group: int) -> bool:
    """Whether a process group has a member that is not a zombie (kill(0) succeeds on zombies)."""
    return any(p.isdigit() and (s := _stat(p)) is not None and s[1] == group for p in os.listdir("/proc"))


def _stop(signum, frame):
    raise SystemExit(128 + signum)


def run_bounded(cmd: list[str], limit_s: float, grace_s: float = 5.0, **popen) -> Bounded:
    """Run `cmd` (Popen keywords: env, cwd, stdout, stderr) for at most `limit_s`; its tree never outlives this call."""
    proc = subprocess.Popen(cmd, start_new_session=True, **popen)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main else None  # our own limit's SIGTERM ends the tree too
    try:
        try:
            return Bounded(proc.wait(timeout=limit_s), False)
        except subprocess.TimeoutExpired:
            return Bounded(None, True, end_tree(proc, grace_s))
    finally:
        if proc.poll() is None:
            end_tree(proc, grace_s)
        _signal_groups([proc.pid], signal.SIGKILL)  # what is left of its own group after it exited
        if main:
            signal.signal(signal.SIGTERM, previous)
