"""Where one fleet's gateway keeps its files, and how they are written: the config holds tokens, so every file here
is 0600 from its first byte."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

_SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes; HAProxy appends a suffix while it binds


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


def write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 from the first byte (the file holds tokens)."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
