"""HAProxy's runtime API and master CLI over their UNIX sockets: the fleet backend's per-replica stats, the master's
reload counters, draining one replica."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.gateway.config import BACKEND
from deploy.gateway.errors import GatewayError
from deploy.gateway.files import Paths


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


def reload_counts(paths: Paths) -> tuple[int, int]:
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


def drain(paths: Paths, name: str) -> None:
    """No new requests for this replica; the ones it serves finish."""
    answer = api(paths.admin, f"set server {BACKEND}/{name} state drain").strip()
    if answer:
        raise GatewayError(f"haproxy would not drain {name}: {answer}")
