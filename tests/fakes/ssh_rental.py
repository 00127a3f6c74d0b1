"""An `ssh`-provider rental on the loopback sshd (tests/fakes/sshd.py), with a real csm-runtime server (tiny-random) started
on it the way the `start` step does: detached over SSH, token file 0600 on both sides, pid and pid file in the ledger.

It is what `deploy provision --provider ssh ... --runtime` leaves behind, minus the install (this checkout's .venv
serves), so `deploy tunnel` and `deploy teardown` can be tested against a real box and server in seconds.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from deploy.ledger import TUNNEL, Ledger
from deploy.provision.box_steps import ensure_ssh_key
from deploy.provision.layout import BoxLayout
from deploy.provision.options import RuntimeOptions
from deploy.provision.server import server_command
from deploy.remote.host import RemoteHost, free_port
from deploy.secrets.tokens import new_rental_token
from deploy.settings import load_settings


@dataclass
class SshRental:
    id: int
    port: int  # the server's port on the box (loopback)
    pid: int  # the server's process (group leader)
    pid_file: str  # relative to the box user's home
    token_file: Path
    log: str


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stop_group(pid: int) -> None:
    """Test cleanup: the detached server's whole process group (it is the group leader: setsid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    if not wait_gone(pid, 10):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not running(pid)


def start_ssh_rental(sshd, tmp_path: Path, *, ready: bool = True, timeout: float = 60.0) -> SshRental:
    """Ledger row (provider ssh, this sshd), our key authorized, the server started detached over SSH; with `ready`,
    wait until its port listens (the model is loaded). Uses DEPLOY_HOME from the environment (the autouse fixture)."""
    settings = load_settings()
    pub = ensure_ssh_key(settings)
    with open(sshd.authorized_keys, "a") as f:
        f.write(pub.strip() + "\n")
    box_id = f"{sshd.user}@{sshd.host}:{sshd.port}"
    box_dir = tmp_path / "box-dir"
    (box_dir / "profiles").mkdir(parents=True)
    name = f"csm-runtime-test-{uuid.uuid4().hex[:8]}"  # its own pid file: other tests' servers are not touched
    port = free_port()
    with Ledger(settings.ledger_path) as ledger:
        rental = ledger.record_intent(attempt_id="test", provider="ssh", label_prefix=settings.label_prefix)
        ledger.record_rented(rental.id, box_id)
        ledger.record_connection(rental.id, ssh_host=sshd.host, ssh_port=sshd.port, ssh_user=sshd.user)
        token_file, token_sha = new_rental_token(settings.home_path, rental.id)
        host = RemoteHost(
            sshd.host,
            sshd.port,
            sshd.user,
            settings.ssh_key_path,
            on_new_key=lambda key: ledger.pin_host_key(rental.id, key),
        )
        try:
            host.put(token_file, str(box_dir / "token"))
            host.run(f"chmod 600 {shlex.quote(str(box_dir / 'token'))}", stream=False)
            opts = RuntimeOptions(model="tiny-random", mode="current", port=port)
            pid = host.start_detached(server_command(opts, BoxLayout(str(box_dir), "current"), str(box_dir)), name=name)
        finally:
            host.close()
        ledger.update_meta(
            rental.id,
            token_file=str(token_file),
            token_sha256=token_sha,
            model="tiny-random",
            port=port,
            server_pid=pid,
            server_pid_file=f".csm-deploy-run/{name}.pid",
            server_log=f".csm-deploy-run/{name}.log",
            endpoint=f"http://127.0.0.1:{port}",
            access=TUNNEL,
        )
    rental_info = SshRental(rental.id, port, pid, f".csm-deploy-run/{name}.pid", token_file, f"{name}.log")
    if ready:
        deadline = time.monotonic() + timeout
        while subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode:
            if not running(pid) or time.monotonic() > deadline:
                raise AssertionError(f"the test server (pid {pid}) did not listen on {port}")
            time.sleep(0.2)
    return rental_info
