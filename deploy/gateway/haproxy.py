"""One HAProxy master per fleet, driven: start, reload (new config, streams kept), drain, stop, and its runtime API.
The config it runs is rendered by config.py (a pure function).

Reloads never cut a stream: master-worker mode (`-W`), SIGUSR2 to the master starts a new worker on the new config
and the old one finishes the connections it has (bounded by `hard-stop-after`). Before a reload the current server
states are saved (`show servers state`) and loaded by the new worker, so a replica that is DOWN stays DOWN.

Tokens (the client's and every replica's) are in the config, so it is written 0600 under DEPLOY_HOME and never
printed; HAProxy's own error lines are scrubbed of them before they reach an error message.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import DeployError, UsageError
from deploy.gateway.config import BACKEND
from deploy.secrets.tokens import read_token_file, token_path, write_token

_SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes; HAProxy appends a suffix while it binds


class GatewayError(DeployError):
    """HAProxy is missing, refused the config, or did not start, reload or stop as asked."""


# --- files and paths -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    """Where one fleet's gateway keeps its files: the config (0600), pid file, state file, and the sockets (in a
    short directory: a UNIX socket path must fit in 108 bytes)."""

    dir: Path
    sockets: Path

    @classmethod
    def for_fleet(cls, home: Path, fleet: str) -> Paths:
        d = Path(home) / "gateway" / fleet
        sockets = d
        if len(str(d / "r0000000000.sock.00000.tmp")) > _SUN_PATH_MAX:
            digest = hashlib.sha256(str(d.resolve()).encode()).hexdigest()[:12]
            sockets = Path("/tmp") / f"csm-gw-{os.getuid()}-{digest}"
        return cls(d, sockets)

    @property
    def config(self) -> Path:
        return self.dir / "haproxy.cfg"

    @property
    def pidfile(self) -> Path:
        return self.dir / "haproxy.pid"

    @property
    def state_file(self) -> Path:
        return self.dir / "servers.state"

    @property
    def admin(self) -> Path:
        return self.sockets / "admin.sock"

    @property
    def master(self) -> Path:
        return self.sockets / "master.sock"

    def make(self) -> None:
        for d in (self.dir, self.sockets):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(d, 0o700)


def client_token(home: Path, fleet: str) -> tuple[Path, str]:
    """The token clients present to the gateway: DEPLOY_HOME/tokens/gateway-<fleet>.token (0600), made once."""
    path = token_path(home, f"gateway-{fleet}")
    if not path.exists():
        write_token(path, exclusive=True)
    os.chmod(path, 0o600)
    return path, read_token_file(path)


def write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 from the first byte (the file holds tokens)."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def scrub(text: str, secrets_: Sequence[str]) -> str:
    for s in secrets_:
        if s:
            text = text.replace(s, "***")
    return text


# --- the haproxy executable ----------------------------------------------------------------------------------------


def find_haproxy(explicit: str | None = None) -> str:
    """`explicit` (DEPLOY_HAPROXY), else `haproxy` on PATH, else /usr/sbin/haproxy (Debian puts it outside a user's
    PATH)."""
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise GatewayError(f"DEPLOY_HAPROXY={explicit} is not an executable file")
        return explicit
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
    if not found:
        raise GatewayError(
            "haproxy not found: install it (Debian/Ubuntu: `apt-get install haproxy`) or set DEPLOY_HAPROXY=/path"
        )
    return found


def validate(haproxy: str, config: Path, secrets_: Sequence[str]) -> None:
    res = subprocess.run([haproxy, "-c", "-q", "-f", str(config)], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if "ALERT" in ln] or res.stderr.splitlines()
        raise GatewayError(f"haproxy refused the generated config: {scrub(' | '.join(lines[:3]), secrets_)}")


def check_port_free(bind: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind, port))
        except OSError as exc:
            raise UsageError(f"port {port} on {bind} is in use ({exc.strerror}): pick another with --port") from None


# --- the running process -------------------------------------------------------------------------------------------


def master_pid(paths: Paths) -> int | None:
    """The HAProxy master for this fleet, if it runs (the pid file is checked against /proc: pids get reused)."""
    try:
        pid = int(paths.pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return pid if any(b"haproxy" in part for part in cmdline[:1]) and str(paths.config).encode() in cmdline else None


def api(sock: Path, command: str, *, timeout: float = 5.0) -> str:
    """One command on HAProxy's runtime API (or the master CLI) over its UNIX socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(sock))
        except OSError as exc:
            raise GatewayError(f"the gateway's socket {sock} does not answer ({exc.strerror or exc})") from None
        chunks = []
        try:
            s.sendall(command.encode() + b"\n")
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError as exc:  # a master re-executing itself on reload resets its CLI connections
            raise GatewayError(f"the gateway's socket {sock} dropped `{command.split()[0]}` ({exc})") from None
    return b"".join(chunks).decode(errors="replace")


@dataclass(frozen=True)
class ServerStat:
    name: str
    status: str  # UP, DOWN, DRAIN, MAINT, "UP 1/2" ...
    current: int  # connections open now (streams in flight)
    total: int  # connections served since this worker started
    check: str  # L7OK, L7STS, L4CON, INI ...

    @property
    def up(self) -> bool:
        return self.status.startswith("UP")

    @property
    def checked(self) -> bool:
        return bool(self.check) and not self.check.startswith("INI")


def server_stats(paths: Paths) -> dict[str, ServerStat]:
    """The fleet backend's servers, from `show stat` (CSV: the header names the columns)."""
    text = api(paths.admin, "show stat")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# "):
        raise GatewayError(f"unexpected answer to `show stat`: {text[:120]!r}")
    cols = lines[0][2:].split(",")
    at = {c: i for i, c in enumerate(cols)}
    out = {}
    for line in lines[1:]:
        f = line.split(",")
        if f[at["pxname"]] != BACKEND or f[at["svname"]] in ("FRONTEND", "BACKEND"):
            continue
        out[f[at["svname"]]] = ServerStat(
            f[at["svname"]],
            f[at["status"]],
            int(f[at["scur"]] or 0),
            int(f[at["stot"]] or 0),
            f[at["check_status"]].replace("* ", ""),
        )
    return out


def _reloads(paths: Paths) -> tuple[int, int]:
    """(reloads, failed reloads) from the master CLI's `show proc`."""
    text = api(paths.master, "show proc")
    m = re.search(r"^\d+\s+master\s+(\d+)\s+\[failed:\s*(\d+)\]", text, re.M)
    if not m:
        raise GatewayError(f"unexpected answer to `show proc`: {text[:160]!r}")
    return int(m.group(1)), int(m.group(2))


def wait_checked(paths: Paths, names: Sequence[str], *, timeout: float = 30.0) -> dict[str, ServerStat]:
    """Until every named server has been health-checked once by the current worker, so a replica that is still
    warming is already out of rotation when start or reload returns."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stats = server_stats(paths)
            if all(n in stats and stats[n].checked for n in names):
                return stats
        except GatewayError:
            stats = {}
        if time.monotonic() > deadline:
            waiting = [n for n in names if n not in stats or not stats[n].checked]
            raise GatewayError(f"HAProxy did not check {', '.join(waiting)} within {timeout:g} s")
        time.sleep(0.1)


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
    before, failed_before = _reloads(paths)
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(GatewayError):
            count, failed = _reloads(paths)
            if failed > failed_before:
                raise GatewayError("haproxy could not load the new config; the old one still serves")
            if count > before:
                break
        if time.monotonic() > deadline:
            raise GatewayError(f"haproxy did not reload within {timeout:g} s")
        time.sleep(0.05)
    wait_checked(paths, names)


def drain(paths: Paths, name: str) -> None:
    """No new requests for this replica; the ones it serves finish."""
    answer = api(paths.admin, f"set server {BACKEND}/{name} state drain").strip()
    if answer:
        raise GatewayError(f"haproxy would not drain {name}: {answer}")


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
