"""The emulator's state: offers, instances and their lifecycle on a clock the test controls, and the test controls.

Instances move created -> loading -> running (or, with `null_status_s`, null -> loading -> running while cur_state
already says running), point their ssh_host/ssh_port at a real sshd (the shared one, or with `boxes` a box of their
own), and bill by rate x time (or vast's GPU/disk/bandwidth split). The HTTP side is in api.py; what a create makes,
and the create faults, in creates.py; the options in realism.py.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.fakes.vast import billing
from tests.fakes.vast.api import ApiServer
from tests.fakes.vast.bids import Bids
from tests.fakes.vast.boxes import Box, BoxSetup
from tests.fakes.vast.creates import Creates
from tests.fakes.vast.faults import Fault, RateLimiter
from tests.fakes.vast.offers import default_offers
from tests.fakes.vast.realism import Realism
from tests.fakes.vast.ssh_access import SshAccess

DESTROY_GRACE_S = 0.3  # from a destroy to its container stopping
STATUS_MSG = {None: None, "created": "scheduling", "loading": "pulling image", "running": "success, running"}


class VastEmulator(SshAccess, Creates, Bids, ApiServer):
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
        strict: bool = True,
        box_root: Path | None = None,
        box_setup: BoxSetup | None = None,
        **realism: Any,
    ):
        """`public_ipaddr`: what instances report as their public address (default: ssh_host); `same_host_port`:
        a `-p P:P` mapping gets public port P (a box of our own, where the server's port is reachable as is) instead
        of a high port like vast's. `strict` (the default): every realistic behaviour of realism.py on, vast as it
        is; `strict=False`: the kind emulator; `**realism`: any of those options by name (they win over `strict`).
        `box_root`: where boxes live (default: a temporary directory); `box_setup`: where and how they run."""
        super().__init__()
        self.realism = (Realism.strict() if strict else Realism()).with_options(**realism)
        self.box_setup = box_setup or BoxSetup()
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
        self.limiter = RateLimiter(self.realism.rate_limits, self.realism.searches_per_minute)
        self.refused: set[int] = set()
        self.stuck: set[int] = set()
        self.dead_ssh: set[int] = set()
        self.failing: dict[int, tuple[str, str]] = {}  # offer -> (actual_status, status_msg) it ends in
        self.heartbeat_lost: set[int] = set()
        self.unplaceable_offers: set[int] = set()
        self.image_users: dict[str, str] = {}
        self.garbage: str | None = None
        self.attach_failures = 0
        self.credit_refusal: dict[str, Any] | None = None
        self.lost_creates: list[int] = []  # statuses for the next creates that succeed but answer an error
        self.after_create: list[int] = []  # statuses for the requests that follow a create
        self.resend_answers: list[int] = []  # statuses for the creates that follow a lost one (commit_then_fail)
        self._resends_after_commit: list[int] = []
        self.outage_until = 0.0
        self.outage_status = 500
        self.requests: list[tuple[str, str]] = []
        self.calls: list[tuple[str, str, dict[str, Any]]] = []  # (method, path, JSON body) of every request
        self.next_id = 7_000_001
        self._own_root = box_root is None
        self.box_root = Path(tempfile.mkdtemp(prefix="vast-boxes-")) if box_root is None else box_root
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()

    # --- test controls ------------------------------------------------------------------------------------------
    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.offset += seconds
            self.tick()

    def fail(self, method: str, path_re: str, status: int, times: int = 1, msg: str = "injected fault") -> None:
        """The next `times` requests (-1: all) to a path matching `path_re` answer `status` (method "*": any)."""
        retry_after = "0" if self.realism.retry_after_header else None
        with self.lock:
            self.faults.append(Fault(method, path_re, status, times, {"error": "injected", "msg": msg}, retry_after))

    def refuse(self, offer_id: int) -> None:
        """Create on this offer answers as if someone rented it first (400; 404 with `documented_refusal`)."""
        self.refused.add(offer_id)

    def stick_loading(self, offer_id: int) -> None:
        self.stuck.add(offer_id)

    def fail_loading(self, offer_id: int, status_msg: str, status: str = "loading") -> None:
        """An instance on this offer never runs: it stays in `status` with this `status_msg` (realism.py has
        OCI_FAILURE, which vast shows in `created`, and MANIFEST_UNKNOWN, a pull that cannot succeed)."""
        self.failing[offer_id] = (status, status_msg)

    def lose_heartbeat(self, offer_id: int) -> None:
        """An instance on this offer goes `unknown` (no heartbeat from the host) where it would have run."""
        self.heartbeat_lost.add(offer_id)

    def unplaceable(self, offer_id: int) -> None:
        """The machine behind this offer cannot start an instance now: create answers 410 if the body says
        `cancel_unavail: true`, else it succeeds and leaves a stopped instance that bills its disk."""
        self.unplaceable_offers.add(offer_id)

    def kill_ssh(self, offer_id: int) -> None:
        self.dead_ssh.add(offer_id)

    def image_user(self, image: str, user: str) -> None:
        """This image's Dockerfile ends with `USER user`: in SSH launch modes vast's injected sshd cannot start
        unless the create says `user: root`, so the box never answers SSH (needs `boxes`)."""
        self.image_users[image] = user

    def garbage_listing(self, mode: str | None = "html") -> None:
        """html: 200 text/html page; truncated: broken JSON; shape: rows missing every field the CLI needs."""
        self.garbage = mode

    def attach_fails(self, times: int = 1) -> None:
        """The next `times` `attach ssh` calls answer 200 `{"success": false, ...}` and add no key."""
        self.attach_failures = times

    def no_credit(self, status: int = 400) -> None:
        """Every create is refused for the account, not the offer (shape of vast's `Insufficient credit` answers)."""
        self.credit_refusal = {
            "status": status,
            "body": {"success": False, "error": "insufficient_credit", "msg": "Insufficient credit: add credit"},
        }

    def lose_create_response(self, times: int = 1, status: int = 500) -> None:
        """The next `times` creates go through at vast (the instance exists and bills) but answer `status`."""
        self.lost_creates.extend([status] * times)

    def fail_after_create(self, calls: int, status: int = 500) -> None:
        """The `calls` requests that follow the next create (whatever they are) answer `status`."""
        self.after_create = [status] * calls

    def outage(self, seconds: float, status: int = 500) -> None:
        """Every request answers `status` for the next `seconds` of emulated time (`advance` ends it early)."""
        with self.lock:
            self.outage_until = self.now() + seconds
            self.outage_status = status

    def destroy_fails(self, times: int = 1, status: int = 500) -> None:
        """The next `times` destroys (-1: every one) answer `status` and destroy nothing."""
        self.fail("DELETE", r"^/api/v0/instances/\d+/$", status, times, msg="destroy failed")

    def add_offer(self, **fields: Any) -> int:
        """One more offer: a copy of the first default offer with these fields (`id` defaults to the next free)."""
        with self.lock:
            oid = int(fields.pop("id", max(self.offers, default=1000) + 1))
            self.offers[oid] = {**default_offers()[0], "id": oid, "ask_contract_id": oid, **fields}
            return oid

    def transfer(self, iid: int, down_gb: float = 0.0, up_gb: float = 0.0) -> None:
        """Bytes the box moved, billed at the offer's inet_down_cost/inet_up_cost (with `split_billing`)."""
        with self.lock:
            d, u = self.instances[iid]["_transfer"]
            self.instances[iid]["_transfer"] = (d + down_gb, u + up_gb)

    def running_ids(self) -> set[str]:
        with self.lock:
            return {str(i) for i, inst in self.instances.items() if inst["_destroyed_at"] is None}

    def create_direct(self, offer_id: int, label: str | None) -> int:
        """Rent as if the create call had happened (for crash-recovery tests that need exact timing)."""
        with self.lock:
            return self._create(offer_id, {"label": label, "image": "img", "disk": 10})

    def box(self, iid: int) -> Box:
        """The instance's box (with `boxes`): its home, its onstart's log and exit status."""
        box = self.instances[iid]["_box"]
        if box is None:
            raise LookupError(f"instance {iid} has no box (emulator built without boxes)")
        return box

    def billing(self, iid: int) -> dict[str, Any]:
        """The emulator's own account of what an instance billed: created_at, running_at, destroyed_at, GPU hours,
        disk hours, and the GPU / disk / bandwidth / total dollars (vast's split), beside `kind_usd`."""
        with self.lock:
            self._apply_outbids()
            inst = self.instances[iid]
            return billing.record(inst, self.now(), self._running_spans(inst))

    def count(self, method: str, path_re: str) -> int:
        return sum(1 for m, p, _ in self.calls if m == method and re.search(path_re, p))

    def bodies(self, method: str, path_re: str) -> list[dict[str, Any]]:
        return [b for m, p, b in self.calls if m == method and re.search(path_re, p)]

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def _schedule(self) -> tuple[str | None, float, float]:
        """(first status, when loading starts, when running starts), in seconds after create."""
        r = self.realism
        if r.null_status_s > 0:
            return None, r.null_status_s, r.null_status_s + max(0.1, self.running_after_s - self.loading_after_s)
        return "created", self.loading_after_s, self.running_after_s

    def _phase(self, inst: dict[str, Any], at: float) -> tuple[str | None, str | None]:
        """actual_status and status_msg at emulated time `at`, before any stop or destroy."""
        first, t_loading, t_running = self._schedule()
        age, offer = at - inst["start_date"], inst["_offer"]
        if age < t_loading:
            return first, STATUS_MSG[first]
        if offer in self.failing:
            return self.failing[offer]
        if age < t_running or offer in self.stuck:
            return "loading", STATUS_MSG["loading"]
        if offer in self.heartbeat_lost:
            return "unknown", None
        return "running", STATUS_MSG["running"]

    def _running_spans(self, inst: dict[str, Any]) -> billing.Spans:
        """When the container ran (what the GPU bills): from reaching `running` to a stop, a destroy or now."""
        end = inst["_destroyed_at"] or self.now()
        if inst["_unplaced"] or self._phase(inst, end)[0] != "running":
            return []
        t_running = inst["start_date"] + self._schedule()[2]
        spans, start = [], t_running
        for stopped, restarted in inst["_stops"]:
            if stopped > start:
                spans.append((start, stopped))
            start = max(start, restarted if restarted is not None else end)
        if start < end:
            spans.append((start, end))
        return spans

    def _status(self, inst: dict[str, Any]) -> dict[str, Any]:
        if (outbid := self._outbid_status(inst)) is not None:
            return outbid
        if inst["_unplaced"] or (inst["_stops"] and inst["_stops"][-1][1] is None):
            msg = "required resources are unavailable" if inst["_unplaced"] else "stopped by user"
            return dict(actual_status="stopped", cur_state="stopped", intended_status="stopped", status_msg=msg)
        status, msg = self._phase(inst, self.now())
        return dict(actual_status=status, cur_state="running", intended_status="running", status_msg=msg)

    def _row(self, inst: dict[str, Any]) -> dict[str, Any]:
        row = {k: v for k, v in inst.items() if not k.startswith("_")}
        row.update(self._status(inst))
        row["next_state"] = row["cur_state"]
        if row["actual_status"] != "running":
            if not self.realism.early_ssh_endpoint or inst["_unplaced"]:
                row["ssh_port"] = None
            row["ports"] = {}  # vast fills the mapping in once the container runs
        return row

    def _gone_row(self, inst: dict[str, Any]) -> dict[str, Any]:
        """What `gone_after_destroy="destroyed"` answers: the shape vast's CLI self-test treats as gone."""
        row = self._row({**inst, "_destroyed_at": None})
        row.update(actual_status="destroyed", intended_status="destroyed", cur_state="unloaded", next_state="unloaded")
        return row

    def _destroy(self, inst: dict[str, Any]) -> None:
        """Billing stops now; the box's container stops a moment later (the ticker), as on vast, so a box that
        destroys itself still reads vast's answer."""
        inst["_destroyed_at"] = self.now()

    def _set_state(self, inst: dict[str, Any], state: str) -> None:
        """PUT {"state": "stopped" | "running"}: stop keeps the disk (and its bill), start runs it again."""
        stopped = bool(inst["_stops"]) and inst["_stops"][-1][1] is None
        if state == "running" and self._outbid_now(inst):
            return  # it stays stopped until its bid is the highest again
        if state == "stopped" and not stopped:
            inst["_stops"].append((self.now(), None))
        elif state == "running" and stopped:
            inst["_stops"][-1] = (inst["_stops"][-1][0], self.now())
        self.tick()

    def tick(self) -> None:
        """Start the boxes of instances that now run and stop the others (called around every request)."""
        with self.lock:
            self._apply_outbids()
            for inst in self.instances.values():
                box = inst["_box"]
                if box is None:
                    continue
                destroyed = inst["_destroyed_at"]
                if destroyed is not None and self.now() - destroyed < DESTROY_GRACE_S:
                    continue
                runs = destroyed is None and self._status(inst)["actual_status"] == "running"
                if runs and not box.running:
                    box.start()
                elif not runs and box.running:
                    box.stop()

    def _tick_forever(self) -> None:
        while not self._stopping.wait(0.02):
            self.tick()

    def start(self) -> str:
        url = super().start()
        if self.realism.boxes:
            self._ticker = threading.Thread(target=self._tick_forever, daemon=True)
            self._ticker.start()
        return url

    def stop(self) -> None:
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        super().stop()
        with self.lock:
            for inst in self.instances.values():
                if inst["_box"] is not None:
                    inst["_box"].stop()
        if self._own_root:
            shutil.rmtree(self.box_root, ignore_errors=True)
