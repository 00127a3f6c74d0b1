"""What vast's JSON means, as our records: offers, instances (status, SSH address, mapped ports), charges.

Pure functions over the dicts `vastai --raw` prints (vastai_cli.py runs it); the sources for each reading are in
docs/provisioning.md#what-the-flow-asks-of-vastai.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from deploy.providers.records import Box, Charge, Offer, State
from deploy.providers.vast_bids import is_bid, outbid

# vast's `actual_status` -> our states. null (None) is "being provisioned": pending, never cur_state's word (which
# says `running` as soon as the GPU is allocated). Anything unseen counts as still pending.
STATUS_TABLE: dict[str, State] = {
    "running": State.RUNNING,
    "created": State.PENDING,
    "loading": State.PENDING,
    "scheduling": State.PENDING,
    "rebooting": State.PENDING,
    "restarting": State.PENDING,
    "stopped": State.STOPPED,
    "exited": State.STOPPED,  # the container crashed: it will not run by itself
    "unknown": State.FAILED,  # no heartbeat from the host
    "offline": State.FAILED,  # the host disconnected
    "frozen": State.FAILED,
    "error": State.FAILED,
    "destroyed": State.GONE,
    "terminated": State.GONE,
}
GONE_WORDS = frozenset({"destroyed", "terminated"})  # in intended_status or actual_status; cur_state `unloaded`
# A `status_msg` with one of these while created/loading means the container will never start (vast's own
# self-test fails at once on them; dstack on "OCI runtime create failed"; a pull of a missing tag: "manifest unknown").
ERROR_WORDS = (
    "error",
    "failed",
    "failure",
    "exception",
    "traceback",
    "oci runtime",
    "permission denied",
    "manifest unknown",
)


def map_status(raw: str | None) -> State:
    return STATUS_TABLE.get((raw or "").lower(), State.PENDING)


def status_msg_error(msg: str | None) -> bool:
    """Whether a status message says the container cannot start."""
    low = (msg or "").lower()
    return any(word in low for word in ERROR_WORDS)


def parse_literal(text: str) -> Any:
    """A Python literal as vastai prints it (`attach ssh`), else JSON, else the text itself."""
    text = text.strip()
    for parse in (ast.literal_eval, json.loads):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    return text


def number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def parse_offer(r: dict[str, Any]) -> Offer:
    return Offer(
        provider="vast",
        id=str(r["id"]),
        gpu_name=str(r.get("gpu_name") or ""),
        num_gpus=int(r.get("num_gpus") or 1),
        price_usd_h=number(r.get("dph_total")) or 0.0,
        reliability=number(r.get("reliability2", r.get("reliability"))),
        cuda=number(r.get("cuda_max_good")),
        disk_gb=number(r.get("disk_space")),
        gpu_ram_gb=(number(r.get("gpu_ram")) or 0) / 1024 or None,
        location=str(r.get("geolocation") or ""),
        host_id=str(r.get("host_id") or r.get("machine_id") or ""),
        storage_usd_gb_month=number(r.get("storage_cost")),
        min_bid_usd_h=number(r.get("min_bid")),
    )


def parse_ports(raw: Any) -> dict[int, int]:
    """vast's docker-style `{"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41234"}]}` -> {8000: 41234} (tcp only)."""
    mapped: dict[int, int] = {}
    if not isinstance(raw, dict):
        return mapped
    for key, bindings in raw.items():
        inner, _, proto = str(key).partition("/")
        if proto not in ("", "tcp") or not inner.isdigit() or not isinstance(bindings, list):
            continue
        for b in bindings:
            host_port = str((b or {}).get("HostPort") or "") if isinstance(b, dict) else ""
            if host_port.isdigit():
                mapped[int(inner)] = int(host_port)
                break
    return mapped


def parse_state(r: dict[str, Any]) -> State:
    """The record's state from `actual_status` alone (None: provisioning), GONE where any status word says the
    instance was destroyed, FAILED where a pending one's status message says it can never start."""
    words = {str(r.get(k) or "").lower() for k in ("intended_status", "actual_status")}
    if words & GONE_WORDS or str(r.get("cur_state") or "").lower() == "unloaded":
        return State.GONE
    state = map_status(r.get("actual_status"))
    if state is State.PENDING and status_msg_error(r.get("status_msg")):
        return State.FAILED
    return state


def parse_box(r: dict[str, Any]) -> Box:
    """One instance record. SSH goes to the box's own address when vast mapped `22/tcp` (a direct runtype), else
    to vast's proxy (`ssh_host:ssh_port`), as `vastai ssh-url` does; the proxy is kept as the other way in
    (vast_ssh.py dials it when the direct route does not answer)."""
    ports = parse_ports(r.get("ports"))
    public_ip = str(r.get("public_ipaddr") or "").strip() or None
    direct = 22 in ports and public_ip is not None
    proxy_host = str(r.get("ssh_host") or "").strip() or None
    proxy_port = int(number(r.get("ssh_port")) or 0) or None
    ssh_host, ssh_port = (public_ip, ports[22]) if direct else (proxy_host, proxy_port)
    raw = r.get("actual_status")
    return Box(
        provider="vast",
        id=str(r["id"]),
        state=parse_state(r),
        raw_status=str(raw) if raw else "provisioning",
        label=r.get("label"),
        ssh_host=ssh_host,
        ssh_port=int(ssh_port) if ssh_port else None,
        price_usd_h=number(r.get("dph_total")),
        gpu_name=str(r.get("gpu_name") or ""),
        started_at=number(r.get("start_date")),
        detail=str(r.get("status_msg") or ""),
        public_ip=public_ip,
        ports=ports,
        direct_ssh=direct,
        proxy_host=proxy_host if proxy_port else None,
        proxy_port=proxy_port if proxy_host else None,
        interruptible=is_bid(r),
        preempted=outbid(r),
    )


_ITEM_NAMES = {"gpu": "gpu", "disk": "disk", "bwd": "bandwidth", "bwu": "bandwidth"}


def charges_by_instance(rows: list[dict[str, Any]]) -> dict[str, Charge]:
    """vast charge rows (`source` = "instance-<id>") summed per instance id, with their items (`gpu`, `disk`,
    `bwd` + `bwu` as `bandwidth`) where vast itemises them, and the span they cover."""
    out: dict[str, Charge] = {}
    for row in rows:
        source = str(row.get("source") or "")
        amount = number(row.get("amount"))
        if not source.startswith("instance-") or amount is None:
            continue
        iid = source.split("-", 1)[1]
        items: dict[str, float] = {}
        for item in row.get("items") or []:
            name = _ITEM_NAMES.get(str((item or {}).get("type") or ""), "other") if isinstance(item, dict) else None
            value = number(item.get("amount")) if isinstance(item, dict) else None
            if name and value is not None:
                items[name] = items.get(name, 0.0) + value
        start, end = number(row.get("start")), number(row.get("end"))
        seen = out.get(iid)
        if seen is not None:
            for name, value in seen.items.items():
                items[name] = items.get(name, 0.0) + value
            amount += seen.amount
            start = min(x for x in (start, seen.start) if x is not None) if (start or seen.start) else None
            end = max(x for x in (end, seen.end) if x is not None) if (end or seen.end) else None
        out[iid] = Charge(amount, start, end, items)
    return out
