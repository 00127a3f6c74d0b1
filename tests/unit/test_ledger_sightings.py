"""The ledger's sightings (migration m004): the last time a box was seen alive, the first time it was seen gone, an
existing ledger migrated in place, and a row closed `not_created` that opens again when its box is found."""

from __future__ import annotations

import sqlite3

from deploy import ledger as L
from deploy.ledger import Ledger
from deploy.ledger.migrations import MIGRATIONS


def test_an_existing_ledger_gains_the_sighting_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)  # a ledger written before m004
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    for fn in MIGRATIONS[:3]:
        fn(db)
        db.execute("INSERT INTO _migrations VALUES (?, 0)", (fn.__name__,))
    db.execute(
        "INSERT INTO rentals (attempt_id, provider, provider_id, status, created_at, started_at) "
        "VALUES ('a', 'vast', '7', 'ready', 10, 11)"
    )
    db.close()
    with Ledger(path) as ledger:
        (row,) = ledger.rentals()
        assert (row.provider_id, row.started_at, row.last_seen_alive, row.gone_seen_at) == ("7", 11, None, None)
        assert ledger.migrate() == []
        names = [r[0] for r in ledger.db.execute("SELECT name FROM _migrations ORDER BY rowid")]
        assert names[-1] == "m004_alive_bounds"


def test_last_seen_alive_keeps_the_latest_and_gone_the_first():
    t = [100.0]
    ledger = Ledger(":memory:", clock=lambda: t[0])
    r = ledger.record_intent(attempt_id="a", provider="vast", label_prefix="p")
    ledger.record_rented(r.id, "7")
    ledger.seen_alive(r.id, 150.0)
    ledger.seen_alive(r.id, 120.0)  # an older listing answered late
    assert ledger.get(r.id).last_seen_alive == 150.0
    ledger.seen_gone(r.id, 200.0, "not listed")
    ledger.seen_gone(r.id, 300.0, "not listed")
    assert ledger.get(r.id).gone_seen_at == 200.0
    assert [e["kind"] for e in ledger.events(r.id)].count("gone_seen") == 1


def test_a_row_closed_not_created_opens_again_when_its_box_is_found():
    t = [100.0]
    ledger = Ledger(":memory:", clock=lambda: t[0])
    r = ledger.record_intent(attempt_id="a", provider="vast", label_prefix="p")
    t[0] = 105.0
    ledger.close_rental(r.id, L.NOT_CREATED, "create refused")
    t[0] = 130.0
    found = ledger.record_rented(r.id, "7", started_at=103.0)
    assert found.is_open and found.ended_at is None and found.reason is None and found.started_at == 103.0
