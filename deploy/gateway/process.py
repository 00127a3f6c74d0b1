"""One HAProxy master per fleet, driven: start, reload (new config, streams kept), stop. The config it runs is
rendered by config.py (a pure function).

Reloads never cut a stream: master-worker mode (`-W`), SIGUSR2 to the master starts a new worker on the new config
and the old one finishes the connections it has (bounded by `hard-stop-after`). Before a reload the current server
states are saved (`show servers state`) and loaded by the new worker, so a replica that is DOWN stays DOWN.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from deploy.errors import UsageError
from deploy.gateway.binary import find_haproxy, validate
from deploy.gateway.errors import GatewayError
from deploy.gateway.files import Paths, write_private
from deploy.gateway.runtime_api import api, reload_counts, wait_checked
from deploy.gateway.tokens import scrub


def master_pid(paths: Paths) -> int | None:
    """The HAProxy master for this fleet, if it runs (the pid file is checked against /proc: pids get reused)."""
    try:
        pid = int(paths.pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return pid if any(b"haproxy" in part for part in cmdline[:1]) and str(paths.config).encode() in cmdline else None


def check_port_free(bind: str, port: int) -> None:
    """A usage error naming --port when the gateway's port is taken, before HAProxy fails on it less clearly."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind, port))
        except OSError as exc:
            raise UsageError(f"port {port} on {bind} is in use ({exc.strerror}): pick another with --port") from None


def start(
    paths: Paths,
    text: str,
    *,
    bind: str,
    port: int,
    secrets_: Sequence[str],
    names: Sequence[str],
    binary: str | None = None,
) -> int:
    """Write the config, validate it, start HAProxy in master-worker mode, wait for the first checks; -> master pid."""
    haproxy = find_haproxy(binary)
    if master_pid(paths) is not None:
        raise UsageError(f"the gateway already runs (pid {master_pid(paths)}); `deploy gateway stop` first")
    check_port_free(bind, port)
    paths.make()
    write_private(paths.config, text)
    if not paths.state_file.exists():
        write_private(paths.state_file, "1\n")
    validate(haproxy, paths.config, secrets_)
    for stale in (paths.admin, paths.master):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    cmd = [haproxy, "-W", "-D", "-f", str(paths.config), "-p", str(paths.pidfile), "-S", f"{paths.master},mode,600"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        alerts = [ln for ln in res.stderr.splitlines() if "ALERT" in ln] or res.stderr.splitlines()[-2:]
        raise GatewayError(f"haproxy did not start: {scrub(' | '.join(alerts[:3]), secrets_)}")
    pid = _wait_pid(paths)
    wait_checked(paths, names)
    return pid


def _wait_pid(paths: Paths, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = master_pid(paths)
        if pid is not None and paths.admin.exists():
            return pid
        time.sleep(0.05)
    raise GatewayError(f"haproxy started but its master did not come up (pid file {paths.pidfile})")


def reload(
    paths: Paths,
    text: str,
    *,
    secrets_: Sequence[str],
    names: Sequence[str],
    timeout: float = 30.0,
    binary: str | None = None,
) -> None:
    """New config, same master: streams in flight finish on the old worker. An invalid config changes nothing."""
    haproxy = find_haproxy(binary)
    pid = master_pid(paths)
    if pid is None:
        raise GatewayError("the gateway is not running: `deploy gateway start`")
    candidate = paths.config.with_name("haproxy.next.cfg")
    write_private(candidate, text)
    validate(haproxy, candidate, secrets_)
    with contextlib.suppress(GatewayError):  # keep DOWN replicas DOWN across the reload
        write_private(paths.state_file, api(paths.admin, "show servers state"))
    os.replace(candidate, paths.config)
    before, failed_before = reload_counts(paths)
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(GatewayError):
            count, failed = reload_counts(paths)
            if failed > failed_before:
                raise GatewayError("haproxy could not load the new config; the old one still serves")
            if count > before:
                break
        if time.monotonic() > deadline:
            raise GatewayError(f"haproxy did not reload within {timeout:g} s")
        time.sleep(0.05)
    wait_checked(paths, names)


def stop(paths: Paths, *, graceful: bool = True, timeout: float = 60.0) -> bool:
    """SIGUSR1: stop accepting, let streams finish (up to `timeout`), then SIGTERM. False when it was not running."""
    pid = master_pid(paths)
    if pid is None:
        return False
    os.kill(pid, signal.SIGUSR1 if graceful else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while master_pid(paths) is not None:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
        time.sleep(0.05)
    for p in (paths.pidfile, paths.admin, paths.master):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    if paths.sockets != paths.dir:  # the short-path socket dir under /tmp is ours alone
        shutil.rmtree(paths.sockets, ignore_errors=True)
    return True
