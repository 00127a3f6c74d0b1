"""The fleet: several rentals serving one model behind one gateway. The model, its ledger tables, and the decisions.

A fleet row (`fleets`, migration m002) holds the `spec` to provision one more replica exactly like the others
(provider, GPU list, provision options) and what the gateway last recorded (port, pid, paths; never a token). A replica
row ties a rental to its fleet with a state: `active` (in the gateway), `draining` (out of the gateway, streams
finishing), `removed` (destroyed or released). Everything here is plain data and small HTTP probes; orchestration
(provision, scale, heal) is in fleet_ops.py and HAProxy in gateway.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from deploy.client import read_token_file
from deploy.endpoint import TUNNEL
from deploy.errors import NotFoundError, UsageError
from deploy.ledger import Ledger, Rental

ACTIVE, DRAINING, REMOVED = "active", "draining", "removed"
LIVE_STATES = (ACTIVE, DRAINING)
DEFAULT_FLEET = "default"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,30}$")


@dataclass(frozen=True)
class Fleet:
    id: int
    name: str
    created_at: float
    spec: dict[str, Any]
    gateway: dict[str, Any]


@dataclass(frozen=True)
class Replica:
    id: int
    fleet_id: int
    rental: Rental
    state: str
    added_at: float
    removed_at: float | None = None
    failing_since: float | None = None
    reason: str | None = None

    @property
    def name(self) -> str:
        """The HAProxy server name: stable for the rental's life, never reused."""
        return f"r{self.rental.id}"

    @property
    def endpoint(self) -> str | None:
        return self.rental.meta.get("endpoint")

    @property
    def needs_tunnel(self) -> bool:
        return self.rental.meta.get("access") == TUNNEL

    def token(self) -> str:
        """The replica's own bearer token, read from its 0600 file under DEPLOY_HOME."""
        path = self.rental.meta.get("token_file")
        if not path:
            raise UsageError(f"replica {self.name} (rental {self.rental.id}) has no token file recorded")
        try:
            return read_token_file(path)
        except UsageError as exc:
            raise UsageError(f"replica {self.name}: {exc}") from None

    def as_dict(self) -> dict[str, Any]:
        return {
            "replica": self.name,
            "rental_id": self.rental.id,
            "state": self.state,
            "provider": self.rental.provider,
            "provider_id": self.rental.provider_id,
            "gpu_name": self.rental.gpu_name,
            "rate_usd_h": self.rental.rate_usd_h,
            "rental_status": self.rental.status,
            "endpoint": self.endpoint,
            "access": self.rental.meta.get("access"),
            "added_at": self.added_at,
            "removed_at": self.removed_at,
            "failing_since": self.failing_since,
            "reason": self.reason,
        }


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise UsageError(f"fleet name {name!r}: use 1-31 lowercase letters, digits, '-' or '_'")
    return name


class FleetStore:
    """Fleet and replica rows over a Ledger's connection (same file, same write-before-act discipline)."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.db = ledger.db

    # --- fleets -----------------------------------------------------------------------------------------------------
    def create(self, name: str, spec: dict[str, Any]) -> Fleet:
        check_name(name)
        if self.find(name) is not None:
            raise UsageError(f"fleet {name!r} exists already; `deploy scale N --fleet {name}` changes its size")
        self.db.execute(
            "INSERT INTO fleets (name, created_at, spec) VALUES (?,?,?)", (name, self.ledger.clock(), json.dumps(spec))
        )
        self.ledger.event(None, "fleet", f"created fleet {name}")
        return self.get(name)

    def find(self, name: str) -> Fleet | None:
        row = self.db.execute("SELECT * FROM fleets WHERE name=?", (name,)).fetchone()
        if row is None:
            return None
        d = dict(row)
        return Fleet(d["id"], d["name"], d["created_at"], json.loads(d["spec"]), json.loads(d["gateway"]))

    def get(self, name: str) -> Fleet:
        fleet = self.find(name)
        if fleet is None:
            known = [r[0] for r in self.db.execute("SELECT name FROM fleets ORDER BY id")]
            hint = f"known: {', '.join(known)}" if known else "create one with `deploy provision --replicas N`"
            raise NotFoundError(f"no fleet {name!r} in the ledger ({hint})")
        return fleet

    def fleets(self) -> list[Fleet]:
        return [self.get(r[0]) for r in self.db.execute("SELECT name FROM fleets ORDER BY id")]

    def set_gateway(self, fleet: Fleet, **changes: Any) -> Fleet:
        current = self.get(fleet.name).gateway
        merged = {k: v for k, v in {**current, **changes}.items() if v is not None}
        self.db.execute("UPDATE fleets SET gateway=? WHERE id=?", (json.dumps(merged), fleet.id))
        return self.get(fleet.name)

    def set_spec(self, fleet: Fleet, spec: dict[str, Any]) -> None:
        self.db.execute("UPDATE fleets SET spec=? WHERE id=?", (json.dumps(spec), fleet.id))

    # --- replicas ---------------------------------------------------------------------------------------------------
    def add(self, fleet: Fleet, rental_id: int) -> Replica:
        self.db.execute(
            "INSERT INTO replicas (fleet_id, rental_id, state, added_at) VALUES (?,?,?,?)",
            (fleet.id, rental_id, ACTIVE, self.ledger.clock()),
        )
        self.ledger.event(rental_id, "replica", f"joined fleet {fleet.name}")
        return self.replica(fleet, f"r{rental_id}")

    def replicas(self, fleet: Fleet, states: Sequence[str] = LIVE_STATES) -> list[Replica]:
        marks = ",".join("?" * len(states))
        rows = self.db.execute(
            f"SELECT * FROM replicas WHERE fleet_id=? AND state IN ({marks}) ORDER BY id", (fleet.id, *states)
        ).fetchall()
        out = []
        for row in rows:
            d = dict(row)
            rental = self.ledger.get(d["rental_id"])
            assert rental is not None
            if d["state"] in LIVE_STATES and not rental.is_open:  # `deploy teardown ID` ended it: it left the fleet
                self.db.execute(
                    "UPDATE replicas SET state=?, reason=?, removed_at=? WHERE id=?",
                    (REMOVED, f"rental {rental.status} outside the fleet", self.ledger.clock(), d["id"]),
                )
                if REMOVED not in states:
                    continue
                d = {**d, "state": REMOVED}
            out.append(
                Replica(
                    d["id"], d["fleet_id"], rental, d["state"], d["added_at"], d["removed_at"], d["failing_since"],
                    d["reason"],
                )
            )  # fmt: skip
        return out

    def replica(self, fleet: Fleet, ref: str | int) -> Replica:
        """By HAProxy name (`r12`) or rental ID (`12`); unknown -> one clear line."""
        text = str(ref).strip()
        rid = text[1:] if text.startswith("r") else text
        for r in self.replicas(fleet, (ACTIVE, DRAINING, REMOVED)):
            if str(r.rental.id) == rid:
                return r
        live = ", ".join(r.name for r in self.replicas(fleet)) or "none"
        raise NotFoundError(f"no replica {text!r} in fleet {fleet.name!r} (its replicas: {live}; see `deploy status`)")

    def set_state(self, replica: Replica, state: str, reason: str | None = None) -> None:
        removed = self.ledger.clock() if state == REMOVED else None
        self.db.execute(
            "UPDATE replicas SET state=?, reason=?, removed_at=COALESCE(?, removed_at) WHERE id=?",
            (state, reason, removed, replica.id),
        )
        self.ledger.event(replica.rental.id, f"replica:{state}", reason)

    def set_failing(self, replica: Replica, since: float | None) -> None:
        self.db.execute("UPDATE replicas SET failing_since=? WHERE id=?", (since, replica.id))


# --- probes (HTTP to one replica) ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What one replica said just now: /ready, and the counters of /metrics."""

    ready: bool
    detail: str
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return int(self.metrics.get("speech_requests", 0))

    @property
    def busy(self) -> bool:
        return self.metrics.get("active_streams", 0) > 0 or self.metrics.get("queue_depth", 0) > 0


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """The numbers the fleet needs from a replica's Prometheus text: speech requests served (2xx), audio seconds,
    active streams, queue depth."""
    out = {"speech_requests": 0.0, "audio_seconds": 0.0, "active_streams": 0.0, "queue_depth": 0.0}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if not m:
            continue
        name, labels, raw = m.groups()
        try:
            value = float(raw)
        except ValueError:
            continue
        if name == "csm_requests_total" and 'route="/v1/audio/speech"' in (labels or ""):
            if re.search(r'status="2\d\d"', labels or ""):
                out["speech_requests"] += value
        elif name == "csm_audio_seconds_total":
            out["audio_seconds"] = value
        elif name == "csm_active_streams":
            out["active_streams"] = value
        elif name == "csm_queue_depth":
            out["queue_depth"] = value
    return out


def probe(url: str, token: str, *, timeout: float = 5.0, with_metrics: bool = True) -> Probe:
    """GET /ready (and /metrics) with the replica's token. Never raises for a replica that is down: says why."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout) as client:
            r = client.get("/ready")
            ready, detail = r.status_code == 200, f"/ready {r.status_code}"
            metrics = parse_metrics(client.get("/metrics").text) if with_metrics else {}
    except httpx.HTTPError as exc:
        return Probe(False, f"no answer ({type(exc).__name__})")
    return Probe(ready, detail, metrics)


# --- decisions (pure) ----------------------------------------------------------------------------------------------


def choose_for_removal(replicas: Sequence[Replica], count: int, unhealthy: Iterable[str] = ()) -> list[Replica]:
    """Which replicas `scale` removes: unhealthy ones first, then the newest (the oldest have proven themselves)."""
    if count <= 0:
        return []
    bad = set(unhealthy)
    ranked = sorted(replicas, key=lambda r: (r.name not in bad, -r.added_at, -r.id))
    return ranked[:count]


def due_for_replacement(
    replica: Replica, *, box_alive: bool, ready: bool, now: float, after_s: float
) -> tuple[bool, str]:
    """Heal's rule: the instance died -> now; /ready has failed for `after_s` seconds (since `failing_since`) -> now;
    otherwise not (yet)."""
    if not box_alive:
        return True, "instance is gone or stopped"
    if ready:
        return False, "ready"
    since = replica.failing_since if replica.failing_since is not None else now
    if now - since >= after_s:
        return True, f"/ready failing for {now - since:.0f} s (limit {after_s:g} s)"
    return False, f"/ready failing for {now - since:.0f} s of {after_s:g} s"


def fleet_usd_per_audio_hour(usd: float, audio_seconds: float) -> float | None:
    """What an hour of audio has cost the fleet so far: dollars spent over audio hours served (None before any)."""
    if audio_seconds <= 0:
        return None
    return usd / (audio_seconds / 3600.0)
