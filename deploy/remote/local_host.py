"""This machine as a box, for the `local` provider: `Host`'s methods with subprocess instead of SSH."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from deploy.errors import RemoteError
from deploy.remote.detached import stop_detached
from deploy.remote.host import CommandResult, Tee, check_copy, free_port, sha256_file

__all__ = ["LocalHost", "free_port"]


class LocalHost:
    """This machine, for the `local` provider: same methods, subprocess instead of SSH. Commands run in `root`;
    a path starting with `~/` in `put`/`read_text` means `root/`, so nothing lands in the operator's real home."""

    def __init__(self, root: str | Path, *, out: IO[str] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = f"local:{self.root}"
        self.out = out

    def path(self, p: str) -> Path:
        if p.startswith("~/"):
            return self.root / p[2:]
        return self.root / p if not os.path.isabs(p) else Path(p)

    def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        stream: bool = True,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> CommandResult:
        started = time.monotonic()
        proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=self.root,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        sink = (self.out or sys.stderr) if stream else None
        out, err = Tee(sink), Tee(sink)
        threads = [
            threading.Thread(target=lambda s=s, t=t: [t.write(line) for line in s], daemon=True)
            for s, t in ((proc.stdout, out), (proc.stderr, err))
        ]
        for t in threads:
            t.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RemoteError(f"{self.name}: `{command}` did not finish within {timeout:.0f} s") from None
        for t in threads:
            t.join()
        result = CommandResult(
            command, proc.returncode, "".join(out.parts), "".join(err.parts), time.monotonic() - started
        )
        if check and not result.ok:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            raise RemoteError(f"{self.name}: `{command}` exited {result.exit_code}: {tail[0]}")
        return result

    def put(self, local: str | Path, remote: str) -> str:
        digest = sha256_file(local)
        dest = self.path(remote)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dest)
        if sha256_file(dest) != digest:
            raise RemoteError(f"{self.name}: checksum mismatch after copying {local} to {dest}")
        return digest

    def get(self, remote: str, local: Path) -> str:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".part")
        shutil.copyfile(self.path(remote), tmp)
        return check_copy(self, remote, tmp, local)

    def start_detached(self, command: str, *, name: str, env: dict[str, str] | None = None) -> int:
        run_dir = self.root / ".csm-deploy-run"
        run_dir.mkdir(exist_ok=True)
        with open(run_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.root,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        return proc.pid

    @contextlib.contextmanager
    def forward_port(self, remote_port: int, local_port: int | None = None) -> Iterator[int]:
        yield remote_port  # same machine: nothing to forward

    def read_text(self, path: str, *, tail_lines: int | None = None) -> str:
        text = self.path(path).read_text(errors="replace")
        return "".join(text.splitlines(keepends=True)[-tail_lines:]) if tail_lines else text

    def stop_all(self) -> list[int]:
        """Stop every process `start_detached` started here that still runs (the local provider's `destroy`)."""
        stopped = []
        for pidfile in sorted((self.root / ".csm-deploy-run").glob("*.pid")):
            pid = pidfile.read_text().strip()
            if stop_detached(self, str(pidfile)) != "not-running":
                stopped.append(int(pid))
        return stopped

    def close(self) -> None:
        pass
