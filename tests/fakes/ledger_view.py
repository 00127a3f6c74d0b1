"""What a `deploy` process wrote: the rentals of a DEPLOY_HOME's ledger, read as the tests check them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from deploy.ledger import Ledger, Rental


def ledger_rows(home: Path) -> list[Rental]:
    """Every rental in `home`'s ledger (opening it migrates a new one, as any `deploy` command does)."""
    with Ledger(home / "ledger.sqlite3") as ledger:
        return ledger.rentals()


def has_event(home: Path, kind: str) -> bool:
    """Whether `home`'s ledger holds an event of `kind` (read-only, so a running provision's writes are never
    blocked; False before the file or its first table exists)."""
    path = home / "ledger.sqlite3"
    if not path.exists():
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT 1 FROM events WHERE kind=?", (kind,)).fetchone() is not None
    except sqlite3.OperationalError:  # the file exists before its first table
        return False
