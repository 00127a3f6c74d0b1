"""The delivery check's server: `csm-runtime serve` in a process group of its own, which autotune always ends.

The server runs as a box runs it, in its own process (a server sharing the sweep's interpreter would share its GIL
with the client's threads) and its own process group, so that ending it ends whatever it started too (e.g.
inductor's compile workers). Every live group is registered here: `stop_on_signals` turns SIGTERM, SIGINT and SIGHUP
(an outer `timeout`, Ctrl-C, a closed SSH session) into `Stopped` after sending SIGTERM to every registered group,
and the server asks the kernel for SIGTERM should autotune die by SIGKILL (Linux's parent-death signal), so no
server outlives the autotune that started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from csm_runtime.settings import RuntimeSettings

STOP_GRACE_S = 8.0  # SIGTERM, then SIGKILL: well inside `timeout --kill-after=15`
_GROUPS: set[int] = set()  # process groups of the servers now running


class ServeFailure(RuntimeError):
    """The served setting does not serve: the server did not start, errored, sent no audio or wrong output."""


class Stopped(BaseException):
    """Autotune got a stop signal. A BaseException, so the sweep's per-candidate `except Exception` lets it pass."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def end_groups(sig: int = signal.SIGTERM) -> None:
    """Send `sig` to every registered server's process group."""
    for pgid in list(_GROUPS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)) -> Iterator[None]:
    """Within the block a stop signal ends every server group at once and raises `Stopped` where the code runs, so
    the `finally` blocks (the server's `stop`, the progress file's last line) still run. A second signal only sends
    SIGKILL to the groups."""
    stopping = []

    def handler(signum, _frame):
        if stopping:
            end_groups(signal.SIGKILL)
            return
        stopping.append(signum)
        end_groups(signal.SIGTERM)
        raise Stopped(signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG, Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class ServerProcess:
    """`csm-runtime serve` with `settings` (a 0600 YAML file in `workdir`) in its own process group, until
    `stop()`; its output goes to `workdir`/server.log, whose tail a failure quotes."""

    def __init__(self, settings: RuntimeSettings, workdir: Path) -> None:
        import yaml

        self.port = settings.port
        self.log_path = workdir / "server.log"
        config = workdir / "settings.yaml"
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.as_dict().items() if v is not None}
        config.touch(mode=0o600)
        config.write_text(yaml.safe_dump(values, sort_keys=False))
        self.command = [sys.executable, "-m", "csm_runtime", "serve", "--config", str(config)]
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "no log"

    def launch(self) -> int:
        """Start the process (its pid is its process group's id); `wait_ready` waits for /ready."""
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=preexec,  # noqa: PLW1509 - a prctl before exec, no Python state touched
            )
        _GROUPS.add(self.proc.pid)
        return self.proc.pid

    def wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServeFailure(f"the server exited ({self.proc.returncode}) while starting: {self.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/ready")
                resp = conn.getresponse()
                text = resp.read().decode(errors="replace")
                conn.close()
                if resp.status == 200:
                    return
                last = text[:200]
                if '"failed"' in text:
                    raise ServeFailure(f"the server failed to load the chosen setting: {last}")
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ServeFailure(f"the server was not ready after {timeout_s:.0f} s ({last})")

    def start(self, timeout_s: float) -> None:
        self.launch()
        self.wait_ready(timeout_s)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after STOP_GRACE_S; then SIGKILL to whatever of the group is left."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(STOP_GRACE_S)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()
        finally:
            _GROUPS.discard(pgid)
