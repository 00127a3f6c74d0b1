"""One rented box per instance: its own home and /etc/environment, its own sshd, the create's onstart run in it.

Nothing runs in a container here, so a box is a directory on this machine seen through a private mount namespace:
every SSH session and the onstart script run under `unshare --mount` with the box's home bound over /root and the
box's environment file over /etc/environment. `touch ~/.no_auto_tmux` or `env >> /etc/environment` in an onstart
therefore lands in the box, as on vast, and never on this machine.

vast's SSH images wire tmux into ~/.bashrc (vast-ai/base-image README: "SSH sessions will automatically launch inside
tmux ... `touch ~/.no_auto_tmux`"), in the shape

    [[ -z "$TMUX" ]] && [ ! -f ~/.no_auto_tmux ] && { tmux attach-session -t ssh_tmux || tmux new-session -s ssh_tmux; exit; }

so without a terminal `ssh box 'cmd'` prints tmux's two complaints and exits 1 without running cmd; sftp dies the same
way. With `auto_tmux` the box's sshd forces every session through `session.sh`, which does exactly that.

The container's own variables (CONTAINER_ID, CONTAINER_API_KEY, VAST_CONTAINERLABEL and the create's `-e` values)
reach the onstart script only, as on vast where SSH sessions do not inherit PID 1's environment (docs.vast.ai: add
`env >> /etc/environment` to onstart to see them in SSH). Sessions read the box's /etc/environment, as pam_env does.

`BoxSetup` says where boxes run: by default on this machine's loopback; with a `prefix` (`ip netns exec NAME`) and
`listen` address, inside a network namespace of their own (tests/e2e). `keep_under_root` keeps entries of this
machine's /root visible in the box (a Python installed under /root); `image_dirs` are directories the "image"
ships (e.g. /opt/venv, for image mode). Stopping a box ends every process that ever ran in it (each carries the
box's mark in its environment), as destroying a container does.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.fakes.sshd import Sshd, start_sshd

SESSION = r"""#!/bin/sh
# A login on a vast box; runs inside the box's mount namespace (tests/fakes/vast/boxes.py).
export HOME=/root
cd /root || exit 1
if [ -r /etc/environment ]; then
    while IFS= read -r line; do
        case "$line" in [A-Za-z_]*=*) export "$line" ;; esac
    done < /etc/environment
fi
if [ "__AUTO_TMUX__" = 1 ] && [ -z "$TMUX" ] && [ ! -f /root/.no_auto_tmux ]; then
    [ -t 0 ] && exec /bin/bash -l  # a terminal: tmux would take it (and ignore any command); a shell stands in
    echo "no sessions" >&2
    echo "open terminal failed: not a terminal" >&2
    exit 1
fi
command=$SSH_ORIGINAL_COMMAND
unset SSH_ORIGINAL_COMMAND  # sshd's ForceCommand variable: a real box's sessions have no such thing
case "$command" in
    "") exec /bin/bash -l ;;
    /usr/lib/openssh/sftp-server*) exec /usr/lib/openssh/sftp-server ;;
    *) exec /bin/bash -c "$command" ;;
esac
"""

ENTER = r"""#!/bin/sh
# Enter the box at __ROOT__: its home over /root, its environment file over /etc/environment, then run "$@".
export __MARK__
exec unshare --mount --propagation private /bin/sh -c '
    __MOUNTS__
    mount --rbind "$0/home" /root && mount --bind "$0/environment" /etc/environment || exit 97
    cd /root && exec "$@"' "__ROOT__" "$@"
"""
MARK = "VAST_EMULATOR_BOX"  # in the environment of every process a box runs: how stopping it finds them all


@dataclass(frozen=True)
class BoxSetup:
    """Where and how the emulator's boxes run (the defaults: on this machine's loopback)."""

    prefix: tuple[str, ...] = ()  # run sshd and onstart under this (`ip netns exec NAME`)
    listen: str = "127.0.0.1"  # the box's sshd address (a namespace's own address)
    keep_under_root: tuple[str, ...] = ()  # /root entries the box still sees (e.g. ".pyenv")
    image_dirs: dict[str, str] = field(default_factory=dict)  # path in the box -> a directory here ("the image")
    session_env: dict[str, str] = field(default_factory=dict)  # the box's /etc/environment to begin with

    def mounts(self, root: Path) -> str:
        """Shell lines that run in the box's mount namespace before its home goes over /root."""
        q = shlex.quote
        lines = []
        for name in self.keep_under_root:
            inside = q(str(root / "home" / name))
            lines.append(f"mkdir -p {inside} && mount --bind {q('/root/' + name)} {inside} || exit 97")
        for parent in sorted({str(Path(t).parent) for t in self.image_dirs}):
            lines.append(f"mount -t tmpfs box-image {q(parent)} || exit 97")  # the box's own /opt
        for target, source in sorted(self.image_dirs.items()):
            lines.append(f"mkdir -p {q(target)} && mount --bind {q(source)} {q(target)} || exit 97")
        return "\n    ".join(lines) or ":"


def kill_marked(mark: str) -> None:
    """SIGKILL every process whose environment carries `mark` (all started inside one box)."""
    needle = mark.encode() + b"\0"
    for _ in range(3):
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if needle in environ + b"\0":
                found.append(int(entry.name))
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def namespaces_available() -> str | None:
    """None when boxes can be made here, else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "boxes bind-mount over /root in a mount namespace: needs root"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --mount failed: {probe.stderr.strip()}"
    return None


def reserve_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Box:
    def __init__(
        self,
        root: Path,
        *,
        env: dict[str, str],
        onstart: str | None,
        auto_tmux: bool,
        ssh: bool = True,
        setup: BoxSetup | None = None,
    ):
        self.root = root
        self.setup = setup or BoxSetup()
        self.mark = f"{MARK}={root}"
        self.home = root / "home"
        self.env = env
        self.onstart = onstart
        self.ssh = ssh  # False: nothing will listen (a dead box, or a launch mode without SSH)
        self.port = reserve_port()
        self.sshd: Sshd | None = None
        self.onstart_proc: subprocess.Popen | None = None
        self.running = False  # the container is up (whether or not anything in it answers)
        self.starts = 0
        if Path("/root") in root.resolve().parents:
            raise ValueError(f"a box cannot live under /root (it is bound over /root): {root}")
        self.home.mkdir(parents=True)
        (root / "environment").write_text("".join(f"{k}={v}\n" for k, v in self.setup.session_env.items()))
        (root / "authorized_keys").touch()
        enter = root / "enter"
        script = ENTER.replace("__MOUNTS__", self.setup.mounts(root)).replace("__MARK__", shlex.quote(self.mark))
        enter.write_text(script.replace("__ROOT__", str(root)))
        session = root / "session.sh"
        session.write_text(SESSION.replace("__AUTO_TMUX__", "1" if auto_tmux else "0"))
        for script in (enter, session):
            script.chmod(0o755)

    @property
    def authorized_keys(self) -> Path:
        return self.root / "authorized_keys"

    @property
    def host_key_pub(self) -> str:
        """The box's SSH host key ("ssh-ed25519 AAAA..."), made when its sshd first started."""
        return " ".join((self.root / "ssh_host_ed25519_key.pub").read_text().split()[:2])

    @property
    def onstart_log(self) -> Path:
        return self.root / "onstart.log"

    def start(self) -> None:
        """The container starts: sshd listens, onstart runs (again, on every start, as vast does)."""
        self.running = True
        self.starts += 1
        if self.ssh:
            self.sshd = start_sshd(
                self.root,
                port=self.port,
                listen=self.setup.listen,
                prefix=self.setup.prefix,
                force_command=f"{self.root / 'enter'} {self.root / 'session.sh'}",
                more_authorized_keys=(self.home / ".ssh" / "authorized_keys",),  # the box's own /root/.ssh
            )
        if self.onstart:
            with open(self.onstart_log, "ab") as log:
                self.onstart_proc = subprocess.Popen(
                    [*self.setup.prefix, str(self.root / "enter"), "/bin/bash", "-c", self.onstart],
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root", **self.env},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def stop(self) -> None:
        """The container stops or is destroyed: every process that ran in it ends (the onstart, sshd, and whatever
        a session left running, detached or not); its files stay until the emulator stops."""
        self.running = False
        if self.onstart_proc is not None:
            if self.onstart_proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.onstart_proc.pid, signal.SIGKILL)
            self.onstart_proc.wait()
            self.onstart_proc = None
        if self.sshd is not None:
            self.sshd.stop()
            self.sshd = None
        kill_marked(self.mark)

    def wait_onstart(self, timeout: float = 10.0) -> int:
        """The onstart script's exit status once it ends (tests only; raises TimeoutError)."""
        deadline = time.monotonic() + timeout
        while self.onstart_proc is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.onstart_proc is None:
            raise TimeoutError("the box never started its onstart")
        return self.onstart_proc.wait(timeout=max(0.0, deadline - time.monotonic()))


def keep_for_this_python() -> tuple[str, ...]:
    """The entries of /root that this interpreter and its environment live in (e.g. ".pyenv"): what a box must
    still see to run this checkout's Python once its own home is over /root."""
    import sys
    import sysconfig

    needed = (os.path.realpath(getattr(sys, "_base_executable", sys.executable)), sysconfig.get_paths()["purelib"])
    parts = [Path(p).parts for p in needed]
    return tuple(sorted({p[2] for p in parts if p[:2] == ("/", "root") and len(p) > 2}))


def this_venv_as_image(venv: Path) -> BoxSetup:
    """Boxes whose "image" ships this checkout's virtual environment as /opt/venv (what docker/Dockerfile builds),
    so image mode runs the real runtime with nothing installed."""
    return BoxSetup(keep_under_root=keep_for_this_python(), image_dirs={"/opt/venv": str(venv.resolve())})
