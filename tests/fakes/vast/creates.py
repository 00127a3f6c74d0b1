"""How a create becomes an instance, and the create faults a test arms: vast's create as the emulator runs it.

A create may be held in flight until the test releases it (a `vastai create` still running when `deploy` is killed),
or commit and then answer an error, with the CLI's re-sends answering what the test says (vastai re-sends a create on
502/503/504 by itself: the re-send finds the offer rented and answers 404 `no_such_ask`).
"""

from __future__ import annotations

import re
import secrets
import socket
import threading
from typing import Any

from tests.fakes.vast.boxes import Box

CREATE_PATH = re.compile(r"/api/v0/asks/(\d+)/")


def closed_port() -> int:
    """A loopback port nothing listens on: what `ssh_port` says for a box whose SSH never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class CreateHold:
    """Create requests wait here, before the emulator's lock (so everything else answers), while the hold is on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._on = False
        self.waiting = 0  # creates in flight now: arrived, not yet answered
        self.arrived = 0  # creates that reached the hold since it was put on

    def hold(self) -> None:
        with self._cond:
            self._on, self.arrived = True, 0

    def release(self) -> None:
        with self._cond:
            self._on = False
            self._cond.notify_all()

    def wait_arrived(self, count: int = 1, timeout: float = 60.0) -> bool:
        """True once `count` creates reached the hold (and are held or were released)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.arrived >= count, timeout)

    def gate(self, method: str, path: str) -> None:
        if method != "PUT" or not CREATE_PATH.fullmatch(path):
            return
        with self._cond:
            if not self._on:
                return
            self.arrived += 1
            self.waiting += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._on)
            self.waiting -= 1


class Creates:
    """Mixed into VastEmulator: the create test controls, and the instance record a create makes."""

    create_hold: CreateHold
    lost_creates: list[int]
    resend_answers: list[int]

    def hold_creates(self) -> None:
        """From now on, create requests wait (in flight, nothing created yet) until `release_creates`."""
        self.create_hold.hold()

    def release_creates(self) -> None:
        self.create_hold.release()

    @property
    def creates_in_flight(self) -> int:
        """Creates held right now: their client is still waiting for the answer."""
        return self.create_hold.waiting

    def commit_then_fail(self, *statuses: int) -> None:
        """The next create goes through (the instance exists and bills) and answers `statuses[0]`; the creates that
        follow it (vastai's own re-sends) answer the rest, creating nothing; after those, creates answer as vast does
        (a re-send of a create that went through: 404 `no_such_ask`, the offer is rented)."""
        with self.lock:
            self.lost_creates.append(statuses[0])
            self._resends_after_commit = list(statuses[1:])

    def _after_commit(self) -> None:
        """Arm the re-send answers of `commit_then_fail` (called once a create committed)."""
        self.resend_answers, self._resends_after_commit = self._resends_after_commit, []

    def _direct(self, inst: dict[str, Any]) -> bool:
        offer = inst["_offer_row"]
        return "direc" in (inst["image_runtype"] or "") and (offer.get("direct_port_count") or 0) >= 1

    def _ports(self, env: Any, *, direct: bool) -> dict[str, list[dict[str, str]]]:
        """The create body's env `{"-p 8000:8000": "1"}` (how vastai 1.9.1 sends `--env "-p 8000:8000"`) -> vast's
        docker-style `{"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41000"}]}`."""
        ports: dict[str, list[dict[str, str]]] = {}
        if self.realism.direct_ports_only and not direct:
            return ports
        for key in env or {}:
            m = re.fullmatch(r"-p (\d+):(\d+)(?:/(tcp|udp))?", str(key))
            if not m:
                continue
            inner, proto = int(m.group(2)), m.group(3) or "tcp"
            if self.same_host_port:
                host_port = inner
            else:
                host_port, self.next_host_port = self.next_host_port, self.next_host_port + 1
            ports[f"{inner}/{proto}"] = [{"HostIp": "0.0.0.0", "HostPort": str(host_port)}]
        return ports

    def _create(self, offer_id: int, body: dict[str, Any]) -> int:
        offer = self.offers.pop(offer_id)
        disk_gb = float(body.get("disk") or 0)
        iid = self.next_id
        self.next_id += 1
        runtype = body.get("runtype", "ssh" if body.get("args") is None else "args")
        api_key = secrets.token_hex(16) if self.realism.instance_keys else None
        inst: dict[str, Any] = {
            "id": iid,
            "label": body.get("label"),
            "image_uuid": body.get("image"),
            "image_runtype": runtype,
            "onstart": body.get("onstart"),
            "disk_space": body.get("disk"),
            "gpu_name": offer["gpu_name"],
            "num_gpus": offer["num_gpus"],
            "dph_total": offer["dph_total"],
            "machine_id": offer["machine_id"],
            "host_id": offer["host_id"],
            "direct_port_count": offer.get("direct_port_count"),
            "start_date": self.now(),
            "ssh_host": self.ssh_host,
            "ssh_port": closed_port() if offer_id in self.dead_ssh else self.ssh_port,
            "public_ipaddr": self.public_ipaddr,
            "extra_env": [["VAST_CONTAINERLABEL", f"C.{iid}"]],
            "_offer": offer_id,
            "_offer_row": offer,
            "_destroyed_at": None,
            "_unplaced": offer_id in self.unplaceable_offers,
            "_stops": [],
            "_transfer": (0.0, 0.0),
            # dph_total is the all-in hourly price while running: the disk's share of it bills apart (from create)
            "_gpu_rate": max(0.0, offer["dph_total"] - offer.get("storage_cost", 0.15) * disk_gb / 720),
            "_storage_cost": offer.get("storage_cost", 0.15),
            "_inet_down_cost": offer.get("inet_down_cost", 0.005),
            "_inet_up_cost": offer.get("inet_up_cost", 0.01),
            "_api_key": api_key,
            "_box": None,
        }
        inst.update(self._bid_fields(offer, body, inst["_storage_cost"] * disk_gb / 720))
        direct = self._direct(inst)
        inst["ports"] = self._ports(body.get("env"), direct=direct)
        if self.realism.boxes:
            inst["_box"] = self._make_box(inst, body, direct=direct)
            inst["ssh_port"] = inst["_box"].port
            if direct and inst["_box"].ssh:
                inst["ports"]["22/tcp"] = [{"HostIp": "0.0.0.0", "HostPort": str(inst["_box"].port)}]
        self.instances[iid] = inst
        return iid

    def _make_box(self, inst: dict[str, Any], body: dict[str, Any], *, direct: bool) -> Box:
        iid, runtype = inst["id"], inst["image_runtype"] or ""
        env = {str(k): str(v) for k, v in (body.get("env") or {}).items() if not str(k).startswith("-")}
        env.update(CONTAINER_ID=str(iid), VAST_CONTAINERLABEL=f"C.{iid}")
        if inst["_api_key"]:
            env["CONTAINER_API_KEY"] = inst["_api_key"]
        user = body.get("user") or self.image_users.get(str(body.get("image")), "root")
        ssh = runtype != "args" and user == "root" and inst["_offer"] not in self.dead_ssh
        onstart = None if runtype == "args" else body.get("onstart")  # args: `onstart` is the entrypoint override
        return Box(
            self.box_root / str(iid),
            env=env,
            onstart=onstart,
            auto_tmux=self.realism.auto_tmux,
            ssh=ssh,
            setup=self.box_setup,
        )
