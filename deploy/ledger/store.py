"""The ledger's rentals and events, in SQLite, each written BEFORE the action that depends on it.

A crash at any point leaves a row that `deploy status` and `deploy teardown --all` can act on: the intent row (with the
label the rental will carry) exists before the create call, the provider's id is written right after it. The file
lives under DEPLOY_HOME, mode 0600, WAL. No API key or token is ever stored here. Each rental pins what it is reached
by: the SSH host key (`host_key`) and, for a server on a public address, its TLS certificate (`pin_tls_cert`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.errors import NotFoundError, UsageError
from deploy.ledger.migrations import MIGRATIONS
from deploy.ledger.records import DIRECT as DIRECT  # how a server is reached, importable from here too
from deploy.ledger.records import TUNNEL as TUNNEL
from deploy.ledger.records import Billing, ServerRecord, SshTarget, WatchdogRecord, ssh_target, tls_pinned

# Rental statuses. Open = still (possibly) billing; the rest are final and carry `ended_at`.
INTENT = "intent"  # row written, create call not (yet) confirmed
RENTED = "rented"  # the provider gave an id
READY = "ready"  # every provision step passed
FAILED = "failed"  # a step failed, the box may still exist (kept on failure, or cleanup failed)
DESTROYED = "destroyed"
RELEASED = "released"  # not ours to destroy (ssh/local): ledger closed, box left alone
NOT_CREATED = "not_created"  # create refused: nothing was rented
GONE = "gone"  # the provider no longer knows it (a ghost, now closed)
OPEN_STATUSES = (INTENT, RENTED, READY, FAILED)


@dataclass(frozen=True)
class Rental:
    id: int
    attempt_id: str
    provider: str
    provider_id: str | None
    label: str | None
    offer_id: str | None
    host_id: str | None
    gpu: str | None
    gpu_name: str | None
    rate_usd_h: float
    status: str
    reason: str | None
    ssh_host: str | None
    ssh_port: int | None
    ssh_user: str | None
    host_key: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    meta: dict[str, Any]
    running_at: float | None = None  # when the box started running (a provider that bills the GPU from then)
    disk_usd_h: float | None = None  # the disk's own rate, billed from create to destroy; None: rate x time
    last_seen_alive: float | None = None  # the latest time a listing or poll was asked and showed the box there
    gone_seen_at: float | None = None  # the first time a listing showed it gone while the ledger had it open

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def split_billing(self) -> bool:
        """Billed as the GPU while running plus the disk for the whole life (vast), not rate x time."""
        return self.disk_usd_h is not None

    @property
    def server(self) -> ServerRecord:
        """The runtime server provision started on the box (all None before it did)."""
        return ServerRecord.from_meta(self.meta)

    @property
    def ssh(self) -> SshTarget:
        return ssh_target(self.meta, host=self.ssh_host, port=self.ssh_port, user=self.ssh_user, host_key=self.host_key)

    @property
    def watchdog(self) -> WatchdogRecord | None:
        """The box's watchdog as provision armed it (or why it did not), None where none was started."""
        return WatchdogRecord.from_meta(self.meta)

    @property
    def billing(self) -> Billing:
        return Billing.from_meta(self.meta)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _rental(row: sqlite3.Row) -> Rental:
    d = dict(row)
    d["meta"] = json.loads(d["meta"] or "{}")
    return Rental(**d)


class Ledger:
    """One connection per command; every write commits at once (a crash loses nothing already written)."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time):
        self.path = str(path)
        self.clock = clock
        if self.path != ":memory:":
            p = Path(self.path)
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not p.exists():
                os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
            os.chmod(p, 0o600)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        if self.path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- schema -------------------------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply the migrations not yet recorded. Several processes may open a new ledger at once (`deploy status`
        while a provision starts): each migration is checked again under the write lock, so only one applies it."""
        self.db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        done = {r[0] for r in self.db.execute("SELECT name FROM _migrations")}
        applied = []
        for fn in MIGRATIONS:
            if fn.__name__ in done:
                continue
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if self.db.execute("SELECT 1 FROM _migrations WHERE name = ?", (fn.__name__,)).fetchone():
                    self.db.execute("COMMIT")  # another process applied it while we waited for the lock
                    continue
                fn(self.db)
                self.db.execute("INSERT INTO _migrations VALUES (?, ?)", (fn.__name__, self.clock()))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            applied.append(fn.__name__)
        for wal in (self.path + "-wal", self.path + "-shm"):
            if self.path != ":memory:" and os.path.exists(wal):
                os.chmod(wal, 0o600)
        return applied

    # --- writes -------------------------------------------------------------------------------------------------
    @staticmethod
    def new_attempt_id() -> str:
        return uuid.uuid4().hex[:8]

    def record_intent(
        self,
        *,
        attempt_id: str,
        provider: str,
        label_prefix: str,
        offer_id: str | None = None,
        host_id: str | None = None,
        gpu: str | None = None,
        gpu_name: str | None = None,
        rate_usd_h: float = 0.0,
        disk_usd_h: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Rental:
        """The row that exists before the create call; its label is what the rental will carry. `disk_usd_h`: the
        disk's own hourly rate where the provider bills it apart (its GPU rate is then `rate_usd_h - disk_usd_h`)."""
        now = self.clock()
        self.db.execute("BEGIN IMMEDIATE")
        cur = self.db.execute(
            "INSERT INTO rentals (attempt_id, provider, offer_id, host_id, gpu, gpu_name, rate_usd_h, disk_usd_h,"
            " status, created_at, meta) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                attempt_id,
                provider,
                offer_id,
                host_id,
                gpu,
                gpu_name,
                rate_usd_h,
                disk_usd_h,
                INTENT,
                now,
                json.dumps(meta or {}),
            ),
        )
        rid = cur.lastrowid
        self.db.execute("UPDATE rentals SET label=? WHERE id=?", (f"{label_prefix}:{attempt_id}:{rid}", rid))
        self.db.execute(
            "INSERT INTO events (rental_id, attempt_id, at, kind, detail) VALUES (?,?,?,?,?)",
            (rid, attempt_id, now, "intent", f"offer {offer_id} at {rate_usd_h:.4f} USD/h"),
        )
        self.db.execute("COMMIT")
        return self.get(rid)

    def record_rented(self, rid: int, provider_id: str, *, started_at: float | None = None) -> Rental:
        """The provider's id is known: the row is open and bills from `started_at`. A row an earlier conclusion had
        closed (`not_created`, then found at the provider by its label) opens again: its old end is void."""
        started = started_at or self.clock()
        self._update(rid, provider_id=str(provider_id), status=RENTED, started_at=started, ended_at=None, reason=None)
        self.event(rid, "rented", f"provider id {provider_id}")
        return self.get(rid)

    def set_started(self, rid: int, started_at: float, source: str) -> None:
        """The provider's own start time for the rental's cost clock (it replaces our create-call time)."""
        self._update(rid, started_at=started_at)
        self.event(rid, "clock", f"billing clock from {source}: {started_at:.3f}")

    def set_running(self, rid: int, running_at: float, source: str) -> None:
        """When the box started running (the GPU's billing start where it is billed apart), and how we know."""
        self._update(rid, running_at=running_at)
        self.event(rid, "running", f"running since {running_at:.3f} ({source})")

    def seen_alive(self, rid: int, at: float) -> None:
        """A listing or poll asked at `at` showed the box: it still billed then (the later of the times kept)."""
        self.db.execute(
            "UPDATE rentals SET last_seen_alive = MAX(COALESCE(last_seen_alive, ?), ?) WHERE id=?", (at, at, rid)
        )

    def seen_gone(self, rid: int, at: float, detail: str) -> None:
        """The first listing that showed the box gone while its row was open (answered by `at`): it ended before."""
        if self.db.execute("SELECT gone_seen_at FROM rentals WHERE id=?", (rid,)).fetchone()[0] is None:
            self._update(rid, gone_seen_at=at)
            self.event(rid, "gone_seen", detail)

    def record_connection(self, rid: int, *, ssh_host: str | None, ssh_port: int | None, ssh_user: str | None) -> None:
        self._update(rid, ssh_host=ssh_host, ssh_port=ssh_port, ssh_user=ssh_user)

    def pin_host_key(self, rid: int, host_key: str) -> None:
        """Trust on first use: the first key seen for this rental is the only one accepted afterwards."""
        self._update(rid, host_key=host_key)
        self.event(rid, "host_key_pinned", host_key.split(" ")[0])

    def pin_tls_cert(self, rid: int, path: str, sha256: str) -> None:
        """The server's certificate, fetched over the pinned SSH connection: the only one its clients accept. The
        PEM stays in a file (`path`); the row keeps the path and the certificate's sha256, never a key."""
        self.update_meta(rid, **tls_pinned(path=path, sha256=sha256))
        self.event(rid, "tls_cert_pinned", f"sha256 {sha256}")

    def set_status(self, rid: int, status: str, reason: str | None = None) -> None:
        self._update(rid, status=status, reason=reason)
        self.event(rid, status, reason)

    def close_rental(self, rid: int, status: str, reason: str | None = None, *, ended_at: float | None = None) -> None:
        """Final state and end time: billing stops here for cost reports."""
        self._update(rid, status=status, reason=reason, ended_at=ended_at or self.clock())
        self.event(rid, status, reason)

    def update_meta(self, rid: int, **changes: Any) -> None:
        current = self.get(rid)
        if current is None:
            raise KeyError(rid)
        self._update(rid, meta=json.dumps({**current.meta, **changes}))

    def event(self, rid: int | None, kind: str, detail: str | None = None, *, attempt_id: str | None = None) -> None:
        self.db.execute(
            "INSERT INTO events (rental_id, attempt_id, at, kind, detail) VALUES (?,?,?,?,?)",
            (rid, attempt_id, self.clock(), kind, detail),
        )

    _COLUMNS = frozenset(
        {
            "provider_id",
            "status",
            "reason",
            "ssh_host",
            "ssh_port",
            "ssh_user",
            "host_key",
            "started_at",
            "ended_at",
            "running_at",
            "last_seen_alive",
            "gone_seen_at",
            "meta",
            "label",
        }
    )

    def _update(self, rid: int, **values: Any) -> None:
        assert set(values) <= self._COLUMNS, set(values) - self._COLUMNS
        cols = ", ".join(f"{k}=?" for k in values)
        self.db.execute(f"UPDATE rentals SET {cols} WHERE id=?", (*values.values(), rid))

    # --- reads --------------------------------------------------------------------------------------------------
    def get(self, rid: int) -> Rental | None:
        row = self.db.execute("SELECT * FROM rentals WHERE id=?", (rid,)).fetchone()
        return _rental(row) if row else None

    def require(self, rid: int | str) -> Rental:
        """The rental a command was given, or the one-line error every command shows for a bad ID."""
        try:
            rid = int(rid)
        except ValueError:
            raise UsageError(f"rental ID must be a number (see `deploy status`), got {rid!r}") from None
        rental = self.get(rid)
        if rental is None:
            raise NotFoundError(f"no rental {rid} in the ledger; `deploy status` lists them")
        return rental

    def by_provider_id(self, provider: str, provider_id: str) -> Rental | None:
        row = self.db.execute(
            "SELECT * FROM rentals WHERE provider=? AND provider_id=? ORDER BY id DESC", (provider, str(provider_id))
        ).fetchone()
        return _rental(row) if row else None

    def by_label(self, label: str) -> Rental | None:
        row = self.db.execute("SELECT * FROM rentals WHERE label=?", (label,)).fetchone()
        return _rental(row) if row else None

    def open_rentals(self, provider: str | None = None) -> list[Rental]:
        marks = ",".join("?" * len(OPEN_STATUSES))
        sql = f"SELECT * FROM rentals WHERE status IN ({marks})"
        args: list[Any] = list(OPEN_STATUSES)
        if provider:
            sql += " AND provider=?"
            args.append(provider)
        return [_rental(r) for r in self.db.execute(sql + " ORDER BY id", args)]

    def rentals(self, *, since: float | None = None) -> list[Rental]:
        sql, args = "SELECT * FROM rentals", []
        if since is not None:
            sql += " WHERE ended_at IS NULL OR ended_at >= ?"
            args.append(since)
        return [_rental(r) for r in self.db.execute(sql + " ORDER BY id", args)]

    def events(self, rid: int) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM events WHERE rental_id=? ORDER BY id", (rid,))]


def open_ledger(settings: Any) -> Ledger:
    """The ledger under the settings' DEPLOY_HOME."""
    return Ledger(settings.ledger_path)
