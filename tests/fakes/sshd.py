"""A real OpenSSH server on 127.0.0.1 for Fabric to talk to: its own host key, its own authorized_keys, in a tmp dir.

Debian's /usr/sbin/sshd needs an absolute path, /run/sshd, and StrictModes off (the files live under /tmp).
`authorized_keys` starts empty: the vast emulator's `attach ssh` appends the key, as vast does on a real box.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


@dataclass
class Sshd:
    host: str
    port: int
    user: str
    host_key_pub: str  # "ssh-ed25519 AAAA..."
    authorized_keys: Path
    proc: subprocess.Popen

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def start_sshd(
    root: Path,
    *,
    listen: str = "127.0.0.1",
    prefix: Sequence[str] = (),
    env: dict[str, str] | None = None,
    port: int | None = None,
    force_command: str | None = None,
    more_authorized_keys: Sequence[Path] = (),
) -> Sshd:
    """`listen`/`prefix`: run it elsewhere, e.g. inside a network namespace (prefix `ip netns exec NAME`) on the
    namespace's own address (tests/e2e/test_e2e_provision.py); `env`: variables every session gets (sshd's SetEnv);
    `port`: one reserved earlier (a vast box reports its port before it listens); `force_command`: a program every
    session runs instead of the client's command (which it finds in SSH_ORIGINAL_COMMAND, sftp included: the
    subsystem is then the sftp-server binary, so the forced command can exec it); `more_authorized_keys`: files read
    for keys besides `authorized_keys` (a box's own ~/.ssh/authorized_keys)."""
    if not os.path.exists(SSHD):
        raise RuntimeError(f"{SSHD} is missing: apt-get install openssh-server")
    os.makedirs("/run/sshd", exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    host_key = root / "ssh_host_ed25519_key"
    # started again in the same place (a box that was stopped): the same host key
    pub = " ".join(host_key.with_suffix(".pub").read_text().split()[:2]) if host_key.exists() else keygen(host_key)
    auth = root / "authorized_keys"
    auth.touch()
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # free here; in a namespace of our own every port is free
    sftp = "/usr/lib/openssh/sftp-server" if force_command else "internal-sftp"
    config = root / "sshd_config"
    config.write_text(
        f"""Port {port}
ListenAddress {listen}
HostKey {host_key}
AuthorizedKeysFile {" ".join(str(p) for p in (auth, *more_authorized_keys))}
PidFile {root / "sshd.pid"}
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
Subsystem sftp {sftp}
AllowTcpForwarding yes
LogLevel ERROR
"""
        # one SetEnv line: sshd keeps only the first SetEnv directive, so a second line would be dropped silently
        + ("SetEnv " + " ".join(f"{k}={v}" for k, v in env.items()) + "\n" if env else "")
        + (f"ForceCommand {force_command}\n" if force_command else "")
    )
    with open(root / "sshd.log", "wb") as log:
        proc = subprocess.Popen([*prefix, SSHD, "-D", "-e", "-f", str(config)], stderr=log)
    deadline = time.monotonic() + 30  # three test workers may be starting at once
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((listen, port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(root / 'sshd.log').read_text()}") from None
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("sshd did not listen within 30 s")
    return Sshd(listen, port, getpass.getuser(), pub, auth, proc)
