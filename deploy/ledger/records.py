"""What a rental's ledger row carries beyond its columns, as typed records: the one place that reads and writes the
row's `meta` JSON. The stored keys are the ledger's format (old ledgers read as they are), so a key is named here only.

- `ServerRecord`: the server provision started on the box and how it is reached (endpoint, access, port, token file,
  pinned certificate, model, profile, pid, the Hub token's place on the box).
- `SshTarget`: how SSH reaches the box (address, user, pinned host key, the provider's routes and the one that worked).
- `WatchdogRecord`: the box's own watchdog as provision armed it.
- `Billing`: the times that bound what the rental cost (the create's landing window, the destroy's request, the end
  of the provider's charges).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# How a rental's server is reached (`access`, written by the ready step).
DIRECT = "direct"  # as recorded in `endpoint`: a mapped public port, or this machine
TUNNEL = "ssh-tunnel"  # bound to the box's loopback: through an SSH tunnel to `port`


def _str(v: Any) -> str | None:
    return str(v) if v not in (None, "") else None


def _int(v: Any) -> int | None:
    try:
        return int(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _time(v: Any) -> float | None:
    """A recorded instant: a number, or None for anything else (an older row without it)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@dataclass(frozen=True)
class ServerRecord:
    """The runtime server on a rental's box, as the start and ready steps (and autotune) recorded it."""

    endpoint: str | None = None  # the URL as seen on the box (https when the server binds a public address)
    access: str | None = None  # DIRECT or TUNNEL
    port: int | None = None  # the server's port on the box
    token_file: str | None = None  # this machine's 0600 file with the server's bearer token (never the token)
    token_sha256: str | None = None
    model: str | None = None
    runtime_mode: str | None = None
    pid: int | None = None
    pid_file: str | None = None  # what stopping the server checks before it signals the group
    log: str | None = None
    tls_cert: str | None = None  # the pinned certificate of an https server (a file under DEPLOY_HOME)
    tls_cert_sha256: str | None = None
    profile: Mapping[str, Any] | None = None  # the tuning profile served (autotune's record, or the ready step's)
    hf_token: str | None = None  # where the Hub token came from (never the token)
    box_hf_token_file: str | None = None  # where the Hub token lies on the box

    @property
    def tunnelled(self) -> bool:
        return self.access == TUNNEL

    @property
    def scheme(self) -> str:
        return "https" if (self.endpoint or "").startswith("https:") else "http"

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ServerRecord:
        profile = meta.get("profile")
        return cls(
            endpoint=_str(meta.get("endpoint")),
            access=_str(meta.get("access")),
            port=_int(meta.get("port")),
            token_file=_str(meta.get("token_file")),
            token_sha256=_str(meta.get("token_sha256")),
            model=_str(meta.get("model")),
            runtime_mode=_str(meta.get("runtime_mode")),
            pid=_int(meta.get("server_pid")),
            pid_file=_str(meta.get("server_pid_file")),
            log=_str(meta.get("server_log")),
            tls_cert=_str(meta.get("tls_cert")),
            tls_cert_sha256=_str(meta.get("tls_cert_sha256")),
            profile=profile if isinstance(profile, Mapping) else None,
            hf_token=_str(meta.get("hf_token")),
            box_hf_token_file=_str(meta.get("hf_token_file")),
        )


def server_started(
    *,
    token_file: str,
    token_sha256: str,
    model: str,
    port: int,
    pid: int,
    pid_file: str,
    log: str,
    runtime_mode: str,
) -> dict[str, Any]:
    """The meta keys of a server just started on the box."""
    return {
        "token_file": token_file,
        "token_sha256": token_sha256,
        "model": model,
        "port": port,
        "server_pid": pid,
        "server_pid_file": pid_file,
        "server_log": log,
        "runtime_mode": runtime_mode,
    }


def server_ready(*, endpoint: str, access: str, profile: Any) -> dict[str, Any]:
    """The meta keys of a server that answered: where it is reached, and the profile it serves."""
    return {"endpoint": endpoint, "access": access, "profile": profile}


def hub_token_placed(*, source: str, box_file: str) -> dict[str, Any]:
    """The meta keys of a Hub token put on the box: where it came from and where it lies, never what it is."""
    return {"hf_token": source, "hf_token_file": box_file}


def tls_pinned(*, path: str, sha256: str) -> dict[str, Any]:
    return {"tls_cert": path, "tls_cert_sha256": sha256}


@dataclass(frozen=True)
class SshTarget:
    """How SSH reaches a rental's box: the address last used, the key pinned on first use, the provider's routes."""

    host: str | None
    port: int | None
    user: str | None
    host_key: str | None
    routes: Mapping[str, str] = field(default_factory=dict)  # route name (direct, proxy) -> "host:port"
    path: str | None = None  # the route that last worked

    def route_list(self) -> list[tuple[str, str, int]]:
        """The recorded routes (direct first), one per address; else the last address alone (name "")."""
        found: list[tuple[str, str, int]] = []
        for name in ("direct", "proxy"):
            host, _, port = str(self.routes.get(name) or "").rpartition(":")
            if host and port.isdigit() and all((host, int(port)) != (h, p) for _, h, p in found):
                found.append((name, host, int(port)))
        if not found and self.host and self.port:
            found.append(("", self.host, int(self.port)))
        return found


def ssh_target(
    meta: Mapping[str, Any], *, host: str | None, port: int | None, user: str | None, host_key: str | None
) -> SshTarget:
    routes = meta.get("ssh_routes")
    return SshTarget(
        host=host,
        port=port,
        user=user,
        host_key=host_key,
        routes={str(k): str(v) for k, v in routes.items()} if isinstance(routes, Mapping) else {},
        path=_str(meta.get("ssh_path")),
    )


def ssh_routes(routes: Mapping[str, str]) -> dict[str, Any]:
    return {"ssh_routes": dict(routes)}


def ssh_path(name: str) -> dict[str, Any]:
    return {"ssh_path": name}


@dataclass(frozen=True)
class WatchdogRecord:
    """The watchdog provision started on the box: armed (`running`) with its limits, or why it did not arm."""

    running: bool = False
    limits: str | None = None
    pid: int | None = None
    state_file: str | None = None  # the box's file the watchdog writes its state to
    error: str | None = None

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> WatchdogRecord | None:
        w = meta.get("watchdog")
        if not isinstance(w, Mapping):
            return None
        return cls(
            running=bool(w.get("running")),
            limits=_str(w.get("limits")),
            pid=_int(w.get("pid")),
            state_file=_str(w.get("state_file")),
            error=_str(w.get("error")),
        )

    def to_meta(self) -> dict[str, Any]:
        w: dict[str, Any] = {"limits": self.limits, "running": self.running}
        if self.pid is not None:
            w["pid"] = self.pid
        if self.error is not None:
            w["error"] = self.error
        return {"watchdog": w | {"state_file": self.state_file}}

    def as_dict(self) -> dict[str, Any]:
        """As the ledger keeps it (what `deploy provision --json` shows)."""
        return self.to_meta()["watchdog"]


@dataclass(frozen=True)
class Billing:
    """The recorded instants that bound a rental's cost beyond its columns."""

    create_lands_by: float | None = None  # until then a create this row started may still rent a box
    destroy_asked_at: float | None = None  # billing cannot have stopped before the destroy was asked
    charges_end: float | None = None  # where the provider's charge rows said its billing ended
    charges_asked: bool = False  # the charge rows were asked (even when they gave no end)
    adopted: bool = False  # the row was adopted by its label after a lost create
    interruptible: bool = False  # rented at a bid (vast's interruptible instance): the provider may stop it
    bid_usd_h: float | None = None  # the GPU's bid in USD/h (the rental's rate is this plus its disk)
    preempted_at: float | None = None  # when the provider was first seen to have stopped it for a higher bid

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Billing:
        return cls(
            create_lands_by=_time(meta.get("create_lands_by")),
            destroy_asked_at=_time(meta.get("destroy_asked_at")),
            charges_end=_time(meta.get("charges_end")),
            charges_asked="charges_end" in meta,
            adopted=bool(meta.get("adopted")),
            interruptible=bool(meta.get("interruptible")),
            bid_usd_h=_time(meta.get("bid_usd_h")),
            preempted_at=_time(meta.get("preempted_at")),
        )


def bid_placed(bid_usd_h: float) -> dict[str, Any]:
    """The meta keys of a rental rented at a bid (an interruptible instance)."""
    return {"interruptible": True, "bid_usd_h": float(bid_usd_h)}


def preempted(at: float) -> dict[str, Any]:
    """The meta key of a rental the provider stopped for a higher bid (the first time it was seen)."""
    return {"preempted_at": at}


def adopted() -> dict[str, Any]:
    return {"adopted": True}


def charges_ended(end: float) -> dict[str, Any]:
    return {"charges_end": end}


def destroy_asked(at: float) -> dict[str, Any]:
    return {"destroy_asked_at": at}


def rent_intent(*, image: str, disk_gb: int, create_lands_by: float) -> dict[str, Any]:
    """The meta of an intent row: what is rented, and until when its create may still land."""
    return {"image": image, "disk_gb": disk_gb, "create_lands_by": create_lands_by}


def orphan(label: str | None) -> dict[str, Any]:
    """The meta of a row written for a box found at the provider and not in the ledger."""
    return {"orphan_label": label}


def profile_record(profile: Mapping[str, Any]) -> dict[str, Any]:
    return {"profile": dict(profile)}
