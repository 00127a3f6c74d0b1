"""A stateful emulation of the vast.ai REST API, for the REAL vastai CLI to talk to (vast.ai itself cannot exist here).

It speaks exactly what vastai 1.9.1 sends (see NOTES.md): offers (POST /api/v0/bundles/), create (PUT /api/v0/asks/ID/),
listings (GET /api/v1/instances/, paged), one instance (GET /api/v0/instances/ID/), destroy, label, attach ssh,
charges (GET /api/v0/charges/), the user record and the GPU name list the CLI fetches at import. Instances move
created -> loading -> running on a clock the test controls (`advance()`), point their ssh_host/ssh_port at a real sshd,
and accrue charges by rate x time. Faults are injected per endpoint (`fail`), per offer (`refuse`, `stick_loading`,
`kill_ssh`) or for the listing (`garbage_listing`).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


def closed_port() -> int:
    """A loopback port nothing listens on: what `ssh_port` says for a box whose SSH never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@dataclass
class Fault:
    method: str
    path_re: str
    status: int
    times: int  # how many requests it hits; -1 = forever
    body: dict[str, Any] = field(default_factory=dict)
    retry_after: str | None = "0"


def default_offers() -> list[dict[str, Any]]:
    base = {
        "num_gpus": 1,
        "rentable": True,
        "verified": True,
        "external": False,
        "reliability2": 0.995,
        "cuda_max_good": 12.8,
        "disk_space": 200.0,
        "gpu_ram": 24564,
        "geolocation": "Sweden, SE",
    }
    rows = [
        (1001, "RTX 4090", 0.35, 11),
        (1002, "RTX 4090", 0.42, 12),
        (1003, "RTX 4090", 0.55, 13),
        (1004, "RTX 4090", 0.61, 14),
        (2001, "RTX 3090", 0.18, 21),
        (3001, "H100 SXM", 2.10, 31),
    ]
    return [
        {**base, "id": i, "ask_contract_id": i, "gpu_name": g, "dph_total": p, "host_id": h, "machine_id": h * 10}
        for i, g, p, h in rows
    ]


class VastEmulator:
    def __init__(
        self,
        *,
        api_key: str = "test-key-0123456789",
        ssh_host: str = "127.0.0.1",
        ssh_port: int | None = None,
        authorized_keys: Path | None = None,
        loading_after_s: float = 0.2,
        running_after_s: float = 0.6,
        public_ipaddr: str | None = None,
        same_host_port: bool = False,
    ):
        """`public_ipaddr`: what instances report as their public address (default: ssh_host); `same_host_port`:
        a `-p P:P` mapping gets public port P (a box of our own, where the server's port is reachable as is) instead
        of a high port like vast's."""
        self.api_key = api_key
        self.ssh_host = ssh_host
        self.ssh_port = ssh_port
        self.public_ipaddr = public_ipaddr or ssh_host
        self.same_host_port = same_host_port
        self.next_host_port = 41_000
        self.authorized_keys = authorized_keys
        self.loading_after_s = loading_after_s
        self.running_after_s = running_after_s
        self.lock = threading.RLock()
        self.offset = 0.0
        self.offers: dict[int, dict[str, Any]] = {o["id"]: o for o in default_offers()}
        self.instances: dict[int, dict[str, Any]] = {}  # every instance ever created, destroyed ones included
        self.faults: list[Fault] = []
        self.refused: set[int] = set()
        self.stuck: set[int] = set()
        self.dead_ssh: set[int] = set()
        self.garbage: str | None = None
        self.requests: list[tuple[str, str]] = []
        self.next_id = 7_000_001
        self.server: ThreadingHTTPServer | None = None

    # --- test controls ------------------------------------------------------------------------------------------
    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.offset += seconds

    def fail(self, method: str, path_re: str, status: int, times: int = 1, msg: str = "injected fault") -> None:
        with self.lock:
            self.faults.append(Fault(method, path_re, status, times, {"error": "injected", "msg": msg}))

    def refuse(self, offer_id: int) -> None:
        """Create on this offer answers 400 as if someone rented it first."""
        self.refused.add(offer_id)

    def stick_loading(self, offer_id: int) -> None:
        self.stuck.add(offer_id)

    def kill_ssh(self, offer_id: int) -> None:
        self.dead_ssh.add(offer_id)

    def garbage_listing(self, mode: str | None = "html") -> None:
        """html: 200 text/html page; truncated: broken JSON; shape: rows missing every field the CLI needs."""
        self.garbage = mode

    def running_ids(self) -> set[str]:
        with self.lock:
            return {str(i) for i, inst in self.instances.items() if inst["_destroyed_at"] is None}

    def create_direct(self, offer_id: int, label: str | None) -> int:
        """Rent as if the create call had happened (for crash-recovery tests that need exact timing)."""
        with self.lock:
            return self._create(offer_id, {"label": label, "image": "img", "disk": 10})

    # --- state ----------------------------------------------------------------------------------------------------
    def _status(self, inst: dict[str, Any]) -> str:
        age = self.now() - inst["start_date"]
        if inst["_offer"] in self.stuck:
            return "loading" if age >= self.loading_after_s else "created"
        if age >= self.running_after_s:
            return "running"
        return "loading" if age >= self.loading_after_s else "created"

    def _row(self, inst: dict[str, Any]) -> dict[str, Any]:
        status = self._status(inst)
        row = {k: v for k, v in inst.items() if not k.startswith("_")}
        row.update(actual_status=status, cur_state="running", intended_status="running")
        row["status_msg"] = {"created": "scheduling", "loading": "pulling image", "running": "success, running"}[status]
        if status != "running":
            row["ssh_port"] = None
            row["ports"] = {}  # vast fills the mapping in once the container runs
        return row

    def _ports(self, env: Any) -> dict[str, list[dict[str, str]]]:
        """The create body's env `{"-p 8000:8000": "1"}` (how vastai 1.9.1 sends `--env "-p 8000:8000"`) -> vast's
        docker-style `{"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41000"}]}`."""
        ports: dict[str, list[dict[str, str]]] = {}
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
        iid = self.next_id
        self.next_id += 1
        port = closed_port() if offer_id in self.dead_ssh else self.ssh_port
        self.instances[iid] = {
            "id": iid,
            "label": body.get("label"),
            "image_uuid": body.get("image"),
            "disk_space": body.get("disk"),
            "gpu_name": offer["gpu_name"],
            "num_gpus": offer["num_gpus"],
            "dph_total": offer["dph_total"],
            "machine_id": offer["machine_id"],
            "host_id": offer["host_id"],
            "start_date": self.now(),
            "ssh_host": self.ssh_host,
            "ssh_port": port,
            "public_ipaddr": self.public_ipaddr,
            "extra_env": [["VAST_CONTAINERLABEL", f"C.{iid}"]],
            "ports": self._ports(body.get("env")),
            "_offer": offer_id,
            "_destroyed_at": None,
        }
        return iid

    def charges(self) -> list[dict[str, Any]]:
        rows = []
        for inst in self.instances.values():
            end = inst["_destroyed_at"] or self.now()
            hours = max(0.0, end - inst["start_date"]) / 3600
            rows.append(
                {
                    "id": inst["id"],
                    "type": "instance",
                    "source": f"instance-{inst['id']}",
                    "description": inst["label"],
                    "amount": round(inst["dph_total"] * hours, 6),
                    "start": inst["start_date"],
                    "end": end,
                    "items": [],
                }
            )
        return rows

    # --- HTTP ------------------------------------------------------------------------------------------------------
    def start(self) -> str:
        emu = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: Any, ctype: str = "application/json", headers: dict | None = None):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                with emu.lock:
                    emu.requests.append((method, parts.path))
                    status, out, ctype, headers = emu.route(method, parts.path, query, body, self.headers)
                self._send(status, out, ctype, headers)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

            def do_DELETE(self):
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def route(self, method: str, path: str, query: dict[str, str], body: dict[str, Any], headers: Any):
        J = "application/json"
        for fault in self.faults:
            if fault.times != 0 and fault.method == method and re.search(fault.path_re, path):
                fault.times -= 1 if fault.times > 0 else 0
                extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                return fault.status, fault.body, J, extra
        if path == "/api/v0/gpu_names/unique/":
            return 200, {"gpu_names": sorted({o["gpu_name"] for o in default_offers()})}, J, {}
        if path == "/api/v0/gpu_types/":
            return 200, {"gpu_types": []}, J, {}
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, {"success": False, "error": "invalid_user_key", "msg": "Invalid user key"}, J, {}
        if path == "/api/v0/users/current" or path == "/api/v0/users/current/":
            return 200, {"id": 1, "email": "test@example.invalid", "host_agreement_accepted": False}, J, {}
        if method == "POST" and path == "/api/v0/bundles/":
            return 200, {"offers": self._search(body)}, J, {}
        m = re.fullmatch(r"/api/v0/asks/(\d+)/", path)
        if method == "PUT" and m:
            oid = int(m.group(1))
            if oid in self.refused or oid not in self.offers:
                self.offers.pop(oid, None)
                msg = f"Instance type by id {oid} is not available."
                return 400, {"success": False, "error": "no_such_ask", "msg": msg}, J, {}
            return 200, {"success": True, "new_contract": self._create(oid, body)}, J, {}
        if method == "GET" and path == "/api/v1/instances/":
            return self._listing(query)
        m = re.fullmatch(r"/api/v0/instances/(\d+)/ssh/", path)
        if method == "POST" and m:
            if self.authorized_keys is not None:
                with open(self.authorized_keys, "a") as f:
                    f.write(body.get("ssh_key", "").strip() + "\n")
            return 200, {"success": True}, J, {}
        m = re.fullmatch(r"/api/v0/instances/(\d+)/", path)
        if m:
            iid = int(m.group(1))
            inst = self.instances.get(iid)
            live = inst is not None and inst["_destroyed_at"] is None
            if method == "GET":
                return 200, {"instances": self._row(inst) if live else None}, J, {}
            if not live:
                return 404, {"success": False, "error": "no_such_instance", "msg": f"Instance {iid} not found."}, J, {}
            if method == "DELETE":
                inst["_destroyed_at"] = self.now()
                return 200, {"success": True}, J, {}
            if method == "PUT" and "label" in body:
                inst["label"] = body["label"]
                return 200, {"success": True}, J, {}
        if method == "GET" and path == "/api/v0/charges/":
            rows = self.charges()
            return 200, {"results": rows, "count": len(rows), "total": len(rows), "next_token": None}, J, {}
        return 404, {"success": False, "error": "not_found", "msg": f"no route {method} {path}"}, J, {}

    def _listing(self, query: dict[str, str]):
        if self.garbage == "html":
            return 200, b"<html><body>Service temporarily unavailable</body></html>", "text/html", {}
        if self.garbage == "truncated":
            return 200, b'{"instances": [{"id": 7', "application/json", {}
        live = [self._row(i) for i in sorted(self.instances.values(), key=lambda x: x["id"]) if not i["_destroyed_at"]]
        if self.garbage == "shape":
            live = [{"id": r["id"]} for r in live] or [{"nothing": True}]
        limit = int(query.get("limit") or 25)
        start = int(query.get("after_token") or 0)
        page = live[start : start + limit]
        token = str(start + limit) if start + limit < len(live) else None
        return 200, {"instances": page, "next_token": token, "total_instances": len(live)}, "application/json", {}

    def _search(self, q: dict[str, Any]) -> list[dict[str, Any]]:
        def ok(offer: dict[str, Any]) -> bool:
            for fld, conds in q.items():
                if not isinstance(conds, dict):
                    continue
                key = {"reliability": "reliability2"}.get(fld, fld)
                if key not in offer:
                    continue
                have = offer[key]
                for op, want in conds.items():
                    if isinstance(have, bool):
                        want = want in (True, "true", "True")
                    elif isinstance(have, (int, float)):
                        want = float(want)
                    good = {
                        "eq": lambda a, b: a == b,
                        "neq": lambda a, b: a != b,
                        "gt": lambda a, b: a > b,
                        "gte": lambda a, b: a >= b,
                        "lt": lambda a, b: a < b,
                        "lte": lambda a, b: a <= b,
                        "in": lambda a, b: a in b,
                        "notin": lambda a, b: a not in b,
                    }[op](have, want)
                    if not good:
                        return False
            return True

        rows = [o for o in self.offers.values() if ok(o)]
        for fld, direction in reversed(q.get("order") or []):
            rows.sort(key=lambda o, f=fld: o.get(f) or 0, reverse=direction == "desc")
        return rows[: int(q.get("limit") or 64)]
