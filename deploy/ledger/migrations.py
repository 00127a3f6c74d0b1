"""The ledger's schema as numbered migrations: every table's SQL starts here, in order, never edited once applied.

Each migration is a function registered by `@migration`; `Ledger.migrate` applies the ones not yet recorded in
`_migrations`, each in its own transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []


def migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    """Register a numbered migration; the order in this file is the order applied, never edit an applied one."""
    MIGRATIONS.append(fn)
    return fn


def _script(db: sqlite3.Connection, sql: str) -> None:
    """Run statements one by one: `executescript` would commit the migration's transaction half-way."""
    for stmt in sql.split(";"):
        if stmt.strip():
            db.execute(stmt)


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE rentals (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            attempt_id TEXT NOT NULL,
            provider TEXT NOT NULL,
            provider_id TEXT,
            label TEXT UNIQUE,
            offer_id TEXT,
            host_id TEXT,
            gpu TEXT,
            gpu_name TEXT,
            rate_usd_h REAL NOT NULL DEFAULT 0,
            status TEXT NOT NULL,
            reason TEXT,
            ssh_host TEXT,
            ssh_port INTEGER,
            ssh_user TEXT,
            host_key TEXT,
            created_at REAL NOT NULL,
            started_at REAL,
            ended_at REAL,
            meta TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX rentals_provider_id ON rentals(provider, provider_id);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            rental_id INTEGER REFERENCES rentals(id),
            attempt_id TEXT,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            detail TEXT
        );
        CREATE INDEX events_rental ON events(rental_id);
        """,
    )


@migration
def m002_fleets(db: sqlite3.Connection) -> None:
    """Fleets (several rentals behind one gateway) and their replicas; deploy/ledger/fleets.py reads and writes them."""
    _script(
        db,
        """
        CREATE TABLE fleets (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            spec TEXT NOT NULL DEFAULT '{}',
            gateway TEXT NOT NULL DEFAULT '{}'
        );
        CREATE TABLE replicas (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            fleet_id INTEGER NOT NULL REFERENCES fleets(id),
            rental_id INTEGER NOT NULL UNIQUE REFERENCES rentals(id),
            state TEXT NOT NULL,
            added_at REAL NOT NULL,
            removed_at REAL,
            failing_since REAL,
            reason TEXT
        );
        CREATE INDEX replicas_fleet ON replicas(fleet_id, state);
        """,
    )


@migration
def m003_split_billing(db: sqlite3.Connection) -> None:
    """What a provider that bills the GPU and the disk apart needs (vast: GPU while running, disk from create to
    destroy): when the box started running, and what its disk costs per hour."""
    _script(
        db,
        """
        ALTER TABLE rentals ADD COLUMN running_at REAL;
        ALTER TABLE rentals ADD COLUMN disk_usd_h REAL
        """,
    )


@migration
def m004_alive_bounds(db: sqlite3.Connection) -> None:
    """Where a box that vanished outside the flow (its watchdog, the host, the web console) ended: after the last
    time a listing or poll saw it alive, before the first time one saw it gone."""
    _script(
        db,
        """
        ALTER TABLE rentals ADD COLUMN last_seen_alive REAL;
        ALTER TABLE rentals ADD COLUMN gone_seen_at REAL
        """,
    )
