"""A fake rented box: a network namespace of our own with its own address, reached over a veth pair.

It shares this machine's filesystem (so the box can be handed a prepared Python environment: it has no internet),
but not its network: the box's 127.0.0.1 is its own, so a server the toolkit starts there is reachable only
through SSH, exactly as on a rented machine. Only addresses inside 10.200.0.0/16, on links we create, are used.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass


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
