"""What a `deploy` process wrote: the rentals of a DEPLOY_HOME's ledger, read as the tests check them."""

from __future__ import annotations

from pathlib import Path

from deploy.ledger import Ledger, Rental


def ledger_rows(home: Path) -> list[Rental]:
    """Every rental in `home`'s ledger (opening it migrates a new one, as any `deploy` command does)."""
    with Ledger(home / "ledger.sqlite3") as ledger:
        return ledger.rentals()
