"""Talking to a box over SSH with Fabric (`RemoteHost`); `Host` is what every box connection offers.

`LocalHost` (local_host.py) has the same methods for this machine, so provision steps never care which one they
hold: `run` (streamed output, timeout), `put` and `get` (sha256-checked both ways), `start_detached` (survives our
exit, pid + log file), `forward_port` (a local port that reaches a port on the box), `read_text`. Host keys: trust
on first use, then the pinned key is the only one accepted. Fabric/paramiko are imported only when a RemoteHost is
made, so `deploy --help` stays fast.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from deploy.errors import HostKeyMismatchError, RemoteError


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Host(Protocol):
    """What a provision step may do with a box."""

    name: str

    def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        stream: bool = True,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> CommandResult: ...

    def put(self, local: str | Path, remote: str) -> str: ...

    def get(self, remote: str, local: Path) -> str: ...

    def start_detached(self, command: str, *, name: str, env: dict[str, str] | None = None) -> int: ...

    def forward_port(
        self, remote_port: int, local_port: int | None = None
    ) -> contextlib.AbstractContextManager[int]: ...

    def read_text(self, path: str, *, tail_lines: int | None = None) -> str: ...

    def close(self) -> None: ...


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_copy(host: Host, remote: str, tmp: Path, local: Path) -> str:
    """Move a fetched `tmp` to `local` only when its sha256 equals what the box computes for `remote`."""
    theirs = host.run(f"sha256sum {shlex.quote(remote)}", stream=False).stdout.split()[:1]
    mine = sha256_file(tmp)
    if theirs != [mine]:
        tmp.unlink(missing_ok=True)
        raise RemoteError(f"{host.name}: checksum mismatch copying {remote} back")
    tmp.replace(local)
    return mine


def fingerprint(key_text: str) -> str:
    """`ssh-ed25519 AAAA...` -> `SHA256:...`, as OpenSSH prints a host key."""
    blob = base64.b64decode(key_text.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def mismatch(name: str, presented: str, pinned: str) -> str:
    return (
        f"{name} presented host key {presented.split()[0]} {fingerprint(presented)}, but the ledger pins "
        f"{pinned.split()[0]} {fingerprint(pinned) if pinned else '?'} for it: refusing to connect"
    )


def wait_local_port_open(port: int, timeout: float, check: Callable[[], None] = lambda: None) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port` within `timeout` seconds; `check` runs between
    tries and raises when waiting is pointless (the process that should listen has exited)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        if time.monotonic() > deadline:
            return False
        check()
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_prefix(env: dict[str, str] | None) -> str:
    return "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())


class Tee:
    """Writes remote output to the progress stream while keeping a copy."""

    def __init__(self, sink: IO[str] | None):
        self.sink = sink
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        if self.sink is not None:
            self.sink.write(text)
        return len(text)

    def flush(self) -> None:
        if self.sink is not None:
            self.sink.flush()


# --------------------------------------------------------------------------------------------------------------------
# SSH
# --------------------------------------------------------------------------------------------------------------------


class RemoteHost:
    """A box over SSH (Fabric). `pinned_key` is "type base64"; when None the first key seen is handed to
    `on_new_key` (which pins it in the ledger) and accepted."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        key_path: str | Path,
        *,
        pinned_key: str | None = None,
        on_new_key: Callable[[str], None] | None = None,
        connect_timeout: float = 10.0,
        out: IO[str] | None = None,
    ):
        import paramiko
        from fabric import Config, Connection

        self.name = f"{user}@{host}:{port}"
        self.host, self.port, self.user = host, int(port), user
        self.out = out
        self.pinned_key = pinned_key
        self.seen_key: str | None = None
        config = Config(overrides={"run": {"in_stream": False}, "load_ssh_configs": False})
        self.conn = Connection(
            host,
            user=user,
            port=int(port),
            config=config,
            connect_timeout=int(max(1, connect_timeout)),
            connect_kwargs={
                "key_filename": str(key_path),
                "look_for_keys": False,
                "allow_agent": False,
                "banner_timeout": connect_timeout,
                "auth_timeout": connect_timeout,
            },
        )
        entry = host if self.port == 22 else f"[{host}]:{self.port}"
        me = self

        class _Policy(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
                text = f"{key.get_name()} {key.get_base64()}"
                me.seen_key = text
                if me.pinned_key is not None and me.pinned_key != text:
                    raise HostKeyMismatchError(mismatch(me.name, text, me.pinned_key))
                if me.pinned_key is None:
                    me.pinned_key = text
                    if on_new_key is not None:
                        on_new_key(text)

        if pinned_key:
            ktype, b64 = pinned_key.split(" ", 1)
            with contextlib.suppress(Exception):  # an unknown key type: the policy still compares the text
                key = paramiko.PKey.from_type_string(ktype, base64.b64decode(b64))
                self.conn.client.get_host_keys().add(entry, ktype, key)
        self.conn.client.set_missing_host_key_policy(_Policy())

    def open(self) -> None:
        import paramiko

        try:
            self.conn.open()
        except paramiko.BadHostKeyException as exc:
            self.seen_key = f"{exc.key.get_name()} {exc.key.get_base64()}"
            raise HostKeyMismatchError(mismatch(self.name, self.seen_key, self.pinned_key or "")) from exc
        finally:  # the key the box presented, checked before any login (also when the login then fails)
            transport = self.conn.client.get_transport()
            key = transport.get_remote_server_key() if transport is not None else None
            if key is not None and self.seen_key is None:
                self.seen_key = f"{key.get_name()} {key.get_base64()}"

    def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        stream: bool = True,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> CommandResult:
        from invoke.exceptions import CommandTimedOut

        started = time.monotonic()
        out, err = Tee(self._sink() if stream else None), Tee(self._sink() if stream else None)
        full = _env_prefix(env) + command
        try:
            res = self.conn.run(full, hide=True, warn=True, timeout=timeout, out_stream=out, err_stream=err)
        except CommandTimedOut:
            raise RemoteError(f"{self.name}: `{command}` did not finish within {timeout:.0f} s") from None
        elapsed = time.monotonic() - started
        if timeout is not None and res.exited == -1 and elapsed >= timeout:
            # invoke races its own timer: the killed channel can close (exit -1) before `timed_out` turns true.
            raise RemoteError(f"{self.name}: `{command}` did not finish within {timeout:.0f} s")
        result = CommandResult(command, res.exited, "".join(out.parts), "".join(err.parts), elapsed)
        if check and not result.ok:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            raise RemoteError(f"{self.name}: `{command}` exited {result.exit_code}: {tail[0]}")
        return result

    def _sink(self) -> IO[str]:
        return self.out or sys.stderr

    def put(self, local: str | Path, remote: str) -> str:
        """Copy one file; returns its sha256 after checking the box computes the same."""
        digest = sha256_file(local)
        rel = remote[2:] if remote.startswith("~/") else remote
        parent = os.path.dirname(rel)
        if parent:
            self.run(f"mkdir -p {shlex.quote(parent)}", stream=False)
        self.conn.put(str(local), rel)
        theirs = self.run(f"sha256sum {shlex.quote(rel)}", stream=False).stdout.split()[:1]
        if theirs != [digest]:
            raise RemoteError(f"{self.name}: checksum mismatch after copying {local} to {remote}")
        return digest

    def get(self, remote: str, local: Path) -> str:
        """Copy one file from the box (SFTP); returns its sha256 after checking the box computes the same."""
        rel = remote[2:] if remote.startswith("~/") else remote
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".part")
        self.conn.get(rel, str(tmp))
        return check_copy(self, rel, tmp, local)

    def start_detached(self, command: str, *, name: str, env: dict[str, str] | None = None) -> int:
        """Start `command` so it outlives this SSH session: output in ~/.csm-deploy-run/<name>.log, pid file beside."""
        base = f".csm-deploy-run/{name}"
        inner = _env_prefix(env) + command
        line = (
            f"mkdir -p .csm-deploy-run; nohup setsid bash -c {shlex.quote(inner)} > {base}.log 2>&1 < /dev/null "
            f"& echo $! | tee {base}.pid"
        )
        res = self.run(line, stream=False)
        try:
            return int(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RemoteError(f"{self.name}: could not start {name!r}: {res.stdout.strip()!r}") from None

    @contextlib.contextmanager
    def forward_port(self, remote_port: int, local_port: int | None = None) -> Iterator[int]:
        port = local_port or free_port()
        self.conn.open()
        with self.conn.forward_local(port, remote_port=remote_port, remote_host="127.0.0.1", local_host="127.0.0.1"):
            if not wait_local_port_open(port, 10.0):  # Fabric binds the local end in a thread, after returning control
                raise RemoteError(f"the local end of the SSH forward (127.0.0.1:{port}) never listened")
            yield port

    def read_text(self, path: str, *, tail_lines: int | None = None) -> str:
        cmd = f"tail -n {int(tail_lines)} {shlex.quote(path)}" if tail_lines else f"cat {shlex.quote(path)}"
        return self.run(cmd, stream=False).stdout

    def close(self) -> None:
        self.conn.close()


def wait_for_ssh(
    make_host: Callable[[], RemoteHost],
    *,
    deadline: float,
    what: str,
    poll_s: float = 1.0,
    log: Callable[[str], None] = lambda _m: None,
) -> RemoteHost:
    """Open SSH until a command really runs or the monotonic `deadline` passes; host-key mismatches fail at once.

    The probe echoes a fresh nonce and requires it on stdout: a session that exits 0 without running the command
    (a login hook, vast's tmux auto-attach before the box's onstart has turned it off) must not pass."""
    import secrets

    import paramiko

    last = "no attempt"
    tries = 0
    while True:
        tries += 1
        host = make_host()
        nonce = f"csm-deploy-probe-{secrets.token_hex(8)}"
        try:
            host.open()
            res = host.run(f"echo {nonce}", stream=False, timeout=30, check=False)
            if nonce in res.stdout.split():
                log(f"{what}: SSH answers (1/1 ready) after {tries} tries")
                return host
            said = " ".join((res.stderr or res.stdout).split())[:200] or "nothing"
            last = f"the probe did not run (exit {res.exit_code}, said: {said})"
            host.close()
        except HostKeyMismatchError:
            host.close()
            raise
        except (OSError, EOFError, paramiko.SSHException, RemoteError) as exc:
            last = f"{type(exc).__name__}: {exc}".strip()
            host.close()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RemoteError(f"{what}: SSH did not answer before the deadline ({tries} tries; last: {last})")
        log(f"{what}: waiting for SSH (0/1 ready): {last}")
        time.sleep(min(poll_s, max(0.0, remaining)))
