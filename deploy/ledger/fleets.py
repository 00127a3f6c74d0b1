"""The fleet tables (migration m002): a fleet row and its replica rows, over a Ledger's connection.

A fleet row holds the `spec` to provision one more replica exactly like the others (JSON; deploy/fleet/model.py
gives it a type) and what the gateway last recorded (port, pid, paths; never a token). A replica row ties a rental to
its fleet with a state: `active` (in the gateway), `draining` (out of the gateway, streams finishing), `removed`
(destroyed or released). Reads never write: `retire_closed` is the one call that marks replicas whose rental was
ended outside the fleet (`deploy teardown ID`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deploy.errors import NotFoundError, UsageError
from deploy.ledger.store import Ledger, Rental

ACTIVE, DRAINING, REMOVED = "active", "draining", "removed"
LIVE_STATES = (ACTIVE, DRAINING)
ALL_STATES = (ACTIVE, DRAINING, REMOVED)
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
        return self.rental.server.endpoint

    @property
    def needs_tunnel(self) -> bool:
        return self.rental.server.tunnelled

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
            "access": self.rental.server.access,
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

    def set_spec(self, fleet: Fleet, spec: dict[str, Any], why: str) -> Fleet:
        """A new spec for the replicas made from now on (those running keep what they are); the change is an event."""
        self.db.execute("UPDATE fleets SET spec=? WHERE id=?", (json.dumps(spec), fleet.id))
        self.ledger.event(None, "fleet", f"fleet {fleet.name}: {why}")
        return self.get(fleet.name)

    # --- replicas ---------------------------------------------------------------------------------------------------
    def add(self, fleet: Fleet, rental_id: int) -> Replica:
        self.db.execute(
            "INSERT INTO replicas (fleet_id, rental_id, state, added_at) VALUES (?,?,?,?)",
            (fleet.id, rental_id, ACTIVE, self.ledger.clock()),
        )
        self.ledger.event(rental_id, "replica", f"joined fleet {fleet.name}")
        return self.replica(fleet, f"r{rental_id}")

    def retire_closed(self, fleet: Fleet) -> list[str]:
        """Replicas still active or draining whose rental is closed (`deploy teardown ID` ended it) leave the fleet.
        Returns their names. Commands call this before they read the fleet."""
        retired = []
        for r in self.replicas(fleet, LIVE_STATES):
            if not r.rental.is_open:
                self.db.execute(
                    "UPDATE replicas SET state=?, reason=?, removed_at=? WHERE id=?",
                    (REMOVED, f"rental {r.rental.status} outside the fleet", self.ledger.clock(), r.id),
                )
                retired.append(r.name)
        return retired

    def replicas(self, fleet: Fleet, states: Sequence[str] = LIVE_STATES) -> list[Replica]:
        marks = ",".join("?" * len(states))
        rows = self.db.execute(
            f"SELECT * FROM replicas WHERE fleet_id=? AND state IN ({marks}) ORDER BY id", (fleet.id, *states)
        ).fetchall()
        out = []
        for row in rows:
            d = dict(row)
            rental = self.ledger.get(d["rental_id"])
            assert rental is not None, f"replica row {d['id']} names a rental that does not exist"
            out.append(
                Replica(
                    id=d["id"],
                    fleet_id=d["fleet_id"],
                    rental=rental,
                    state=d["state"],
                    added_at=d["added_at"],
                    removed_at=d["removed_at"],
                    failing_since=d["failing_since"],
                    reason=d["reason"],
                )
            )
        return out

    def replica(self, fleet: Fleet, ref: str | int) -> Replica:
        """By HAProxy name (`r12`) or rental ID (`12`); unknown -> one clear line."""
        text = str(ref).strip()
        rid = text[1:] if text.startswith("r") else text
        for r in self.replicas(fleet, ALL_STATES):
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
