"""SSH tunnels: `forward` holds one open for a block (Fabric, in this process); `ensure`/`close` keep one open for
the gateway in a process of its own.

The gateway's tunnels go to replicas whose server listens on the box's loopback (access `ssh-tunnel`): one
`ssh -N -L 127.0.0.1:<local>:127.0.0.1:<remote>` process per replica, detached (its own session) so it outlives the
`deploy` command that opened it, with the host key pinned in the ledger as the only one accepted (a known_hosts file
written from it; strict checking). Its pid and local port live in DEPLOY_HOME/gateway/<fleet>/tunnel-<name>.*;
`ensure` reuses a live one, `close` ends it. Why OpenSSH there and not Fabric: Fabric's forward lives in our process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from deploy.errors import RemoteError, UsageError
from deploy.ledger import Rental
from deploy.remote.host import free_port, wait_local_port_open


def _files(directory: Path, name: str) -> tuple[Path, Path, Path]:
    return directory / f"tunnel-{name}.pid", directory / f"tunnel-{name}.port", directory / f"tunnel-{name}.log"


def _alive(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"ssh" in cmd.split(b"\0")[0] and b"-N" in cmd


def current(directory: Path, name: str) -> int | None:
    """The local port of this replica's live tunnel, or None."""
    pid_f, port_f, _log = _files(directory, name)
    try:
        pid, port = int(pid_f.read_text()), int(port_f.read_text())
    except (OSError, ValueError):
        return None
    return port if _alive(pid) else None


def ensure(directory: Path, name: str, rental: Rental, key: Path, *, timeout: float = 20.0) -> int:
    """A live tunnel to the rental's server port; returns the local port."""
    port = current(directory, name)
    if port is not None:
        return port
    close(directory, name)
    if not rental.ssh_host or not rental.ssh_port or not rental.host_key:
        raise UsageError(f"replica {name}: rental {rental.id} has no SSH endpoint or pinned host key for a tunnel")
    ssh = shutil.which("ssh")
    if not ssh:
        raise UsageError("ssh (OpenSSH client) not found: the gateway reaches tunnelled replicas through it")
    remote_port = rental.server.port
    if remote_port is None:
        raise UsageError(f"replica {name}: rental {rental.id} has no server port recorded")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    known = directory / f"tunnel-{name}.known_hosts"
    known.write_text(f"[{rental.ssh_host}]:{rental.ssh_port} {rental.host_key}\n")
    local = free_port()
    pid_f, port_f, log_f = _files(directory, name)
    cmd = [
        ssh, "-N", "-T", "-F", "/dev/null", "-i", str(key), "-p", str(rental.ssh_port),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known}", "-o", "ExitOnForwardFailure=yes",
        "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
        "-L", f"127.0.0.1:{local}:127.0.0.1:{remote_port}", f"{rental.ssh_user or 'root'}@{rental.ssh_host}",
    ]  # fmt: skip
    with open(log_f, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    pid_f.write_text(str(proc.pid))
    port_f.write_text(str(local))

    def exited() -> None:
        if proc.poll() is not None:
            tail = log_f.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RemoteError(f"SSH tunnel to replica {name} exited: {tail[0]}")

    if wait_local_port_open(local, timeout, exited):
        return local
    close(directory, name)
    raise RemoteError(f"SSH tunnel to replica {name} did not open within {timeout:g} s")


def close(directory: Path, name: str) -> None:
    pid_f, port_f, _log = _files(directory, name)
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_f.read_text())
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    for f in (pid_f, port_f):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


def close_all(directory: Path) -> None:
    if directory.is_dir():
        for pid_f in directory.glob("tunnel-*.pid"):
            close(directory, pid_f.name[len("tunnel-") : -len(".pid")])


@contextlib.contextmanager
def forward(host, remote_port: int, local_port: int | None = None) -> Iterator[int]:
    """`host.forward_port` for the length of a block, minus one Fabric habit: a forwarded connection the box refused re-raises on exit as a
    ThreadException, which would replace the block's own outcome. What the block saw (an HTTP error) is what counts."""
    from invoke.exceptions import ThreadException

    manager = host.forward_port(remote_port, local_port)
    local_port = manager.__enter__()
    try:
        yield local_port
    except BaseException:
        with contextlib.suppress(ThreadException):
            manager.__exit__(None, None, None)
        raise
    with contextlib.suppress(ThreadException):
        manager.__exit__(None, None, None)


# ---- a tunnel held in the foreground (`deploy tunnel`, `deploy open`) ----
def check_port_free(port: int) -> None:
    """A clear refusal now, rather than a forward that fails once the SSH connection is up."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise UsageError(f"--local-port {port} is already in use on this machine") from None


def hold_open(host, cancel) -> None:
    """Until the command's cancel token is set (SIGINT, SIGTERM, SIGHUP); a dropped SSH connection ends it with an
    error instead of a tunnel that silently refuses."""
    while not cancel.wait(0.5):
        transport = host.conn.transport
        if transport is None or not transport.is_active():
            raise RemoteError("the SSH connection to the box dropped: the tunnel is closed")


def hold_forward(host, remote_port: int, local_port: int | None, opened) -> None:
    """`deploy tunnel` and `deploy open`: forward `remote_port`, call `opened(local_port)`, hold it open until a signal
    ends the command (cleanly: the tunnel closes, exit 0). A signal while SSH still connects ends it at once."""
    from deploy.cancel import Interrupt, handle_signals

    with handle_signals() as cancel:
        try:
            with cancel.interruptible(), forward(host, remote_port, local_port) as port:
                opened(port)
                hold_open(host, cancel)
        except Interrupt:
            pass
