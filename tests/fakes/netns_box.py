"""A fake rented box: a network namespace of our own with its own address, reached over a veth pair.

It shares this machine's filesystem (so the box can be handed a prepared Python environment: it has no internet),
but not its network: the box's 127.0.0.1 is its own, so a server the toolkit starts there is reachable only
through SSH, exactly as on a rented machine. Only addresses inside 10.200.0.0/16, on links we create, are used.

Also what the end-to-end modules do with such a box: one per module (`box_for_module`), its processes ended as
destroying a container ends them (`kill_box_processes`), a home of its own over /root (`box_prefix`), and a scan of
what it wrote for a secret (`files_containing`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def netns_available() -> str | None:
    """None when namespaces can be made here, else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"csmprobe{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"ip netns add failed: {exc.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


@dataclass
class NetnsBox:
    name: str
    host_veth: str
    host_addr: str  # our side of the link
    box_addr: str  # the box's address, what the emulator reports as ssh_host

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def destroy(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def _free_index() -> int:
    used = subprocess.run(["ip", "-4", "-br", "addr"], capture_output=True, text=True, check=True).stdout
    for index in range(1, 255):
        if f"10.200.{index}." not in used:
            return index
    raise RuntimeError("no free 10.200.X.0/30 link left: stale csmbox namespaces? see `ip netns list`")


def create_box(index: int | None = None) -> NetnsBox:
    """Namespace `csmbox<hex>` at 10.200.<index>.2, our end 10.200.<index>.1/30 (a free index by default)."""
    with open("/run/csmbox.lock", "w") as lock:  # two test processes must not pick the same free link
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _create_box(_free_index() if index is None else index)


def _create_box(index: int) -> NetnsBox:
    tag = uuid.uuid4().hex[:6]
    name, host_veth, box_veth = f"csmbox{tag}", f"cbh{tag}", f"cbb{tag}"
    host_addr, box_addr = f"10.200.{index}.1", f"10.200.{index}.2"
    _ip("netns", "add", name)
    box = NetnsBox(name, host_veth, host_addr, box_addr)
    try:
        _ip("link", "add", host_veth, "type", "veth", "peer", "name", box_veth)
        _ip("link", "set", box_veth, "netns", name)
        _ip("addr", "add", f"{host_addr}/30", "dev", host_veth)
        _ip("link", "set", host_veth, "up")
        _ip("-n", name, "addr", "add", f"{box_addr}/30", "dev", box_veth)
        _ip("-n", name, "link", "set", box_veth, "up")
        _ip("-n", name, "link", "set", "lo", "up")
    except subprocess.CalledProcessError:
        box.destroy()
        raise
    return box


# ---- what the end-to-end modules do with a box


@contextlib.contextmanager
def box_for_module() -> Iterator[NetnsBox]:
    """A box for one test module, skipped with the reason where namespaces cannot be made; the connection guard
    (tests/conftest.py) allows its address while it lives. On the way out everything in it ends and it is removed."""
    import pytest

    from tests.conftest import allow_box_address, forget_box_address, require_binary

    require_binary("ip", "iproute2")
    reason = netns_available()
    if reason:
        pytest.skip(f"end-to-end box needs a network namespace: {reason}")
    box = create_box()
    allow_box_address(box.box_addr)
    try:
        yield box
    finally:
        kill_box_processes(box, keep=set())
        box.destroy()
        forget_box_address(box.box_addr)


def box_pids(box: NetnsBox) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", box.name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def kill_box_processes(box: NetnsBox, keep: set[int], grace_s: float = 5.0) -> None:
    """What destroying a container does to what runs in it: SIGTERM, then SIGKILL to what is left, each followed by
    a wait until the namespace holds no process but `keep` (up to `grace_s`), so nothing outlives the call and a
    server gets its time to stop cleanly. Every pid in the namespace was started by the test that made the box."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for p in box_pids(box) if p not in keep]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline and [p for p in box_pids(box) if p not in keep]:
            time.sleep(0.1)


def box_prefix(box: NetnsBox, home: Path, needed: Iterable[str]) -> list[str]:
    """Run a command in the namespace with `home` mounted over /root, keeping the entries of /root that the `needed`
    paths (an interpreter, its site-packages, this checkout) live in."""
    keep = sorted({Path(p).parts[2] for p in needed if Path(p).parts[1:2] == ("root",)})
    lines = ["set -e"]
    for name in keep:
        lines += [f"mkdir -p {home}/{name}", f"mount --bind /root/{name} {home}/{name}"]
    lines += [f"mount --rbind {home} /root", 'exec "$@"']
    return [*box.exec_prefix(), "unshare", "--mount", "--propagation", "private", "sh", "-c", "; ".join(lines), "box"]


def files_containing(root: Path, needle: bytes) -> list[str]:
    """Every file under `root` (the box's home, the operator's) holding `needle`: where a secret must not be."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                if needle in path.read_bytes():
                    hits.append(str(path))
    return hits
