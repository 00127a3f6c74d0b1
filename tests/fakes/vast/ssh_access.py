"""How SSH reaches a box on the emulated vast: the key (`attach ssh`) and the route (direct or vast's proxy).

The key: no vast source says a key attached while `actual_status` is null or `loading` is applied to the container
when it starts. With `attach_before_running` "refused" such an attach answers 400; "dropped" answers
`{"success": true}` and the key never reaches the box (the least forgiving reading: the client cannot tell).

The route: vast lists two ways in. Direct: `public_ipaddr` and the host port of `22/tcp` (mapped for a direct
runtype); proxy: `ssh_host:ssh_port` (e.g. ssh3.vast.ai), which relays to the same sshd. SkyPilot's vast provisioner
dials the proxy only, since "using public_ipaddr directly causes SSH timeouts because direct access is blocked" on
some hosts. `unreachable_direct_ssh(offer, mode)` gives instances on that offer such a direct route: "silent" maps
`22/tcp` to a port that accepts TCP and never speaks (a handshake that hangs), "closed" to a port nothing listens on;
`ssh_port` then is a relay of its own to the box's sshd (the proxy). Needs `boxes`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

from tests.fakes.tcp_relay import Relay
from tests.fakes.vast.api import Reply, error, ok
from tests.fakes.vast.creates import closed_port

ROUTE_MODES = ("silent", "closed")


class Silent:
    """A loopback port that completes TCP handshakes (the kernel's backlog) and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class SshAccess:
    """Mixed into VastEmulator (before the classes whose `_create` and `_attach` it wraps)."""

    instances: dict[int, dict[str, Any]]
    lock: threading.RLock
    realism: Any
    attach_failures: int

    def __init__(self) -> None:
        super().__init__()
        self._direct_faults: dict[int, str] = {}  # offer -> how its instances' direct route fails
        self._route_parts: list[Silent | Relay] = []

    def unreachable_direct_ssh(self, offer_id: int, mode: str = "silent") -> None:
        """Instances created on this offer: the direct SSH route goes nowhere (`mode`), vast's proxy works."""
        if mode not in ROUTE_MODES:
            raise ValueError(f"mode must be one of {ROUTE_MODES}")
        self._direct_faults[offer_id] = mode

    def _create(self, offer_id: int, body: dict[str, Any]) -> int:
        iid = super()._create(offer_id, body)  # type: ignore[misc]
        mode = self._direct_faults.get(offer_id)
        inst = self.instances[iid]
        if mode is not None and inst["_box"] is not None and "22/tcp" in inst["ports"]:
            self._split_routes(inst, mode)
        return iid

    def _split_routes(self, inst: dict[str, Any], mode: str) -> None:
        if mode == "silent":
            dead = Silent()
            self._route_parts.append(dead)
            direct_port = dead.port
        else:
            direct_port = closed_port()
        proxy = Relay(("127.0.0.1", 0), (inst["_box"].setup.listen, inst["_box"].port)).start()
        self._route_parts.append(proxy)
        inst["ports"]["22/tcp"] = [{"HostIp": "0.0.0.0", "HostPort": str(direct_port)}]
        inst["ssh_port"] = proxy.port

    def _attach(self, iid: int, body: dict[str, Any]) -> Reply:
        inst = self.instances.get(iid)
        mode = self.realism.attach_before_running
        live = inst is not None and inst["_destroyed_at"] is None
        if not live or mode == "applied" or self.attach_failures > 0 or self._runs(inst):
            return super()._attach(iid, body)  # type: ignore[misc]
        if mode == "refused":
            return error(400, "invalid_args", f"Instance {iid} is not running yet; cannot add the ssh key.")
        return ok({"success": True})  # dropped: accepted, never applied

    def _runs(self, inst: dict[str, Any]) -> bool:
        return self._status(inst)["actual_status"] == "running"  # type: ignore[attr-defined]

    def stop(self) -> None:
        super().stop()  # type: ignore[misc]
        for part in self._route_parts:
            part.stop()
