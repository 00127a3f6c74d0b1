"""The HTTP side: what vastai 1.9.1 sends (the endpoints `route` answers) and what vast answers, kind or strict.

`route` is one method so a test can subclass the emulator and wrap it (tests/e2e does). Order per request: record
it, the edge's User-Agent check (edge.py), injected faults, an outage, the failures armed after a create, the two
unauthenticated lists the CLI fetches at import, the key (the account's, or an instance's own), the rate limit, then
the endpoint.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.vast import billing, edge, listing
from tests.fakes.vast.creates import CreateHold
from tests.fakes.vast.faults import too_frequent
from tests.fakes.vast.offers import default_offers, search, unknown_filters

J = "application/json"
Reply = tuple[int, Any, str, dict[str, str]]
INSTANCE = re.compile(r"/api/v0/instances/(\d+)/")
ATTACH = re.compile(r"/api/v0/instances/(\d+)/ssh/")
CREATE = re.compile(r"/api/v0/asks/(\d+)/")


def ok(body: Any) -> Reply:
    return 200, body, J, {}


def error(status: int, error: str, msg: str, **extra: Any) -> Reply:
    return status, {"success": False, "error": error, "msg": msg, **extra}, J, {}


class ApiServer:
    """The HTTP server and the routes; the state it reads and changes lives in emulator.py."""

    def __init__(self) -> None:
        self.server: ThreadingHTTPServer | None = None
        self.armed_after_create: list[int] = []
        self.agents: list[tuple[str, str, str, str]] = []  # (method, path, User-Agent, key) of every request
        self.create_hold = CreateHold()  # creates wait there, outside the lock, while a test holds them

    def start(self) -> str:
        emu = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: Any, ctype: str = J, headers: dict | None = None):
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
                emu.create_hold.gate(method, parts.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                with emu.lock:
                    emu.requests.append((method, parts.path))
                    emu.calls.append((method, parts.path, body if isinstance(body, dict) else {}))
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

    # --- one request ----------------------------------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict[str, str], body: dict[str, Any], headers: Any) -> Reply:
        self.tick()
        agent, key = str(headers.get("User-Agent") or ""), str(headers.get("Authorization") or "")
        self.agents.append((method, path, agent, key.removeprefix("Bearer ")))
        if (refused := edge.refusal(self.realism.user_agent_edge, headers)) is not None:
            return refused  # the edge in front of vast answers before vast sees the request (edge.py)
        for fault in self.faults:
            if fault.hits(method, path):
                fault.spend()
                extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                return fault.status, fault.body, J, extra
        if self.now() < self.outage_until:
            return error(self.outage_status, "server_error", "Internal Server Error (outage)")
        if self.armed_after_create:
            return error(self.armed_after_create.pop(0), "server_error", "Internal Server Error (after create)")
        if path == "/api/v0/gpu_names/unique/":
            return ok({"gpu_names": sorted({o["gpu_name"] for o in [*default_offers(), *self.offers.values()]})})
        if path == "/api/v0/gpu_types/":
            return ok({"gpu_types": []})
        key = str(headers.get("Authorization") or "").removeprefix("Bearer ")
        if key != self.api_key:
            denied = self._instance_key(key, method, path)
            if denied is not None:
                return denied
        threshold = self.limiter.check(key, method, path)
        if threshold is not None:
            return 429, too_frequent(method, path, threshold), J, {}  # and no Retry-After: vast sends none
        return self._endpoint(method, path, query, body)

    def _instance_key(self, key: str, method: str, path: str) -> Reply | None:
        """None if an instance's own key may do this; else the refusal. vast: the key "can only start, stop, or
        destroy that specific instance" (docs api-reference/hello-world); show works too (vast-ai/base-image)."""
        owner = next((i for i in self.instances.values() if key and i["_api_key"] == key), None)
        if owner is None or owner["_destroyed_at"] is not None:
            return error(401, "auth_error", "Invalid user key")
        if path == f"/api/v0/instances/{owner['id']}/" and method in ("GET", "PUT", "DELETE"):
            return None
        return error(403, "forbidden", f"this key may only manage instance {owner['id']}")

    def _endpoint(self, method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> Reply:
        if path in ("/api/v0/users/current", "/api/v0/users/current/"):
            return ok({"id": 1, "email": "test@example.invalid", "host_agreement_accepted": False})
        if method == "POST" and path == "/api/v0/bundles/":
            unknown = unknown_filters(body) if self.realism.reject_unknown_filters else []
            if unknown:
                return error(400, "invalid_args", f"Unrecognized search field(s): {', '.join(unknown)}")
            return ok({"offers": search(list(self.offers.values()), body)})
        if method == "PUT" and (m := CREATE.fullmatch(path)):
            return self._create_reply(int(m.group(1)), body)
        if method == "GET" and path == "/api/v1/instances/":
            return self._listing(query)
        if method == "POST" and (m := ATTACH.fullmatch(path)):
            return self._attach(int(m.group(1)), body)
        if m := INSTANCE.fullmatch(path):
            return self._instance(method, int(m.group(1)), body)
        if method == "GET" and path == "/api/v0/charges/":
            split = self.realism.split_billing
            rows = [
                billing.charge_row(i, self.now(), self._running_spans(i), split=split) for i in self.instances.values()
            ]
            return ok({"results": rows, "count": len(rows), "total": len(rows), "next_token": None})
        return error(404, "not_found", f"no route {method} {path}")

    def _create_reply(self, oid: int, body: dict[str, Any]) -> Reply:
        if self.credit_refusal is not None:
            return self.credit_refusal["status"], self.credit_refusal["body"], J, {}
        if self.resend_answers:  # a re-send of a create that went through and answered an error
            return error(self.resend_answers.pop(0), "server_error", "Bad Gateway (re-sent create)")
        if oid in self.refused or oid not in self.offers:
            self.offers.pop(oid, None)
            if self.realism.documented_refusal:
                msg = f"error 404/3603: no_such_ask Instance type by id {oid} is not available."
                return error(404, "invalid_args", msg, ask_id=oid)
            return error(400, "no_such_ask", f"Instance type by id {oid} is not available.")
        if oid in self.unplaceable_offers and body.get("cancel_unavail", True):
            msg = f"error 410/3907: no_such_ask Instance type {oid} is no longer available."
            return error(410, "no_such_ask", msg, ask_id=oid)
        if (low := self._bid_refusal(self.offers[oid], body)) is not None:
            return low[0], low[1], J, {}
        iid = self._create(oid, body)
        self.armed_after_create, self.after_create = list(self.after_create), []
        if self.lost_creates:
            self._after_commit()
            return error(self.lost_creates.pop(0), "server_error", "Internal Server Error")
        reply: dict[str, Any] = {"success": True, "new_contract": iid}
        if self.instances[iid]["_api_key"]:
            reply["instance_api_key"] = self.instances[iid]["_api_key"]
        return ok(reply)

    def _attach(self, iid: int, body: dict[str, Any]) -> Reply:
        inst = self.instances.get(iid)
        if inst is None or inst["_destroyed_at"] is not None:
            return error(404, "no_such_instance", f"Instance {iid} not found.")
        if self.attach_failures > 0:
            self.attach_failures -= 1
            return ok({"success": False, "error": "ssh_key_error", "msg": "could not add the key to the instance"})
        target = inst["_box"].authorized_keys if inst["_box"] is not None else self.authorized_keys
        if target is not None:
            with open(target, "a") as f:
                f.write(str(body.get("ssh_key", "")).strip() + "\n")
        return ok({"success": True})

    def _instance(self, method: str, iid: int, body: dict[str, Any]) -> Reply:
        inst = self.instances.get(iid)
        live = inst is not None and inst["_destroyed_at"] is None
        if method == "GET":
            if live:
                return ok({"instances": self._row(inst)})
            shape = self.realism.gone_after_destroy
            if shape == "404" or (shape == "destroyed" and inst is None):
                return error(404, "no_such_instance", f"Instance {iid} not found.")
            if shape == "empty":
                return ok({"instances": {}})
            if shape == "destroyed":
                return ok({"instances": self._gone_row(inst)})
            return ok({"instances": None})
        if not live:
            return error(404, "no_such_instance", f"Instance {iid} not found.")
        if method == "DELETE":
            self._destroy(inst)
            return ok({"success": True})
        if method == "PUT" and "label" in body:
            inst["label"] = body["label"]
            return ok({"success": True})
        if method == "PUT" and body.get("state") in ("stopped", "running"):
            self._set_state(inst, body["state"])
            return ok({"success": True})
        return error(400, "invalid_args", f"nothing to do for {method} instance {iid}")

    def _listing(self, query: dict[str, str]) -> Reply:
        if self.garbage == "html":
            return 200, b"<html><body>Service temporarily unavailable</body></html>", "text/html", {}
        if self.garbage == "truncated":
            return 200, b'{"instances": [{"id": 7', J, {}
        live = [self._row(i) for i in sorted(self.instances.values(), key=lambda x: x["id"]) if not i["_destroyed_at"]]
        if self.garbage == "shape":
            live = [{"id": r["id"]} for r in live] or [{"nothing": True}]
        try:
            return ok(listing.page(live, query))
        except listing.BadQuery as exc:
            return error(400, "invalid_args", str(exc))
