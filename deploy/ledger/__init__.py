"""The ledger: one SQLite file under DEPLOY_HOME that records every rental before it happens.

store.py       rentals and events (Ledger, Rental, the statuses)
migrations.py  the schema, as numbered migrations (every table's SQL)
fleets.py      fleet and replica rows
reconcile.py   the ledger joined with what the providers list: tracked, orphans, ghosts
"""

from __future__ import annotations

from deploy.ledger.store import (
    DESTROYED,
    DIRECT,
    FAILED,
    GONE,
    INTENT,
    NOT_CREATED,
    OPEN_STATUSES,
    READY,
    RELEASED,
    RENTED,
    TUNNEL,
    Ledger,
    Rental,
    open_ledger,
)

__all__ = [
    "DESTROYED",
    "DIRECT",
    "FAILED",
    "GONE",
    "INTENT",
    "NOT_CREATED",
    "OPEN_STATUSES",
    "READY",
    "RELEASED",
    "RENTED",
    "TUNNEL",
    "Ledger",
    "Rental",
    "open_ledger",
]
