"""The ledger: migrations, file mode, WAL, ordering of writes, reads."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from deploy import ledger as L
from deploy.ledger import Ledger
from deploy.ledger.migrations import MIGRATIONS


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in db.execute(f"PRAGMA table_info({table})")]


def test_migrations_in_memory_and_idempotent():
    ledger = Ledger(":memory:")
    assert "provider_id" in columns(ledger.db, "rentals") and "host_key" in columns(ledger.db, "rentals")
    assert columns(ledger.db, "events") == ["id", "rental_id", "attempt_id", "at", "kind", "detail"]
    applied = [r[0] for r in ledger.db.execute("SELECT name FROM _migrations")]
    assert applied == [m.__name__ for m in MIGRATIONS]
    assert ledger.migrate() == []  # nothing applied twice


def test_file_is_private_and_wal(deploy_home):
    path = deploy_home / "ledger.sqlite3"
    with Ledger(path) as ledger:
        assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        ledger.record_intent(attempt_id="a", provider="vast", label_prefix="p")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(deploy_home).st_mode) & 0o077 == 0


def test_intent_then_rented_then_closed():
    clock = iter(range(100, 200))
    ledger = Ledger(":memory:", clock=lambda: float(next(clock)))
    r = ledger.record_intent(attempt_id="att", provider="vast", label_prefix="csm-deploy", offer_id="9", rate_usd_h=0.5)
    assert r.status == L.INTENT and r.provider_id is None and r.label == f"csm-deploy:att:{r.id}"
    assert [x.id for x in ledger.open_rentals()] == [r.id]
    ledger.record_rented(r.id, "777")
    assert ledger.by_provider_id("vast", "777").id == r.id
    assert ledger.by_label(r.label).provider_id == "777"
    ledger.close_rental(r.id, L.DESTROYED, "teardown")
    done = ledger.get(r.id)
    assert not done.is_open and done.ended_at > done.started_at > done.created_at
    assert ledger.open_rentals() == []
    assert [e["kind"] for e in ledger.events(r.id)] == ["intent", "rented", "destroyed"]


def test_host_key_pin_and_meta():
    ledger = Ledger(":memory:")
    r = ledger.record_intent(attempt_id="a", provider="ssh", label_prefix="p", meta={"image": "x"})
    ledger.pin_host_key(r.id, "ssh-ed25519 AAAA")
    ledger.update_meta(r.id, port=8000)
    got = ledger.get(r.id)
    assert got.host_key == "ssh-ed25519 AAAA" and got.meta == {"image": "x", "port": 8000}


def test_rentals_since_keeps_open_and_recent():
    t = [0.0]
    ledger = Ledger(":memory:", clock=lambda: t[0])
    old = ledger.record_intent(attempt_id="a", provider="vast", label_prefix="p")
    ledger.record_rented(old.id, "1")
    ledger.close_rental(old.id, L.DESTROYED)
    t[0] = 1000.0
    new = ledger.record_intent(attempt_id="b", provider="vast", label_prefix="p")
    assert [r.id for r in ledger.rentals(since=500)] == [new.id]


def test_unknown_column_update_is_refused():
    ledger = Ledger(":memory:")
    r = ledger.record_intent(attempt_id="a", provider="vast", label_prefix="p")
    with pytest.raises(AssertionError):
        ledger._update(r.id, rate_usd_h=1.0)


def test_processes_opening_a_new_ledger_at_once_apply_each_migration_once(tmp_path):
    """`deploy status` while a provision creates the ledger: both migrate, neither fails (a real SQLite file)."""
    import multiprocessing

    path = tmp_path / "ledger.sqlite3"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        results = pool.map(_open_and_count, [str(path)] * 24)
    assert all(r is None for r in results), results
    with Ledger(path) as ledger:
        names = [r[0] for r in ledger.db.execute("SELECT name FROM _migrations")]
    assert len(names) == len(set(names)) == len(MIGRATIONS)


def _open_and_count(path: str) -> str | None:
    try:
        with Ledger(path) as ledger:
            ledger.rentals()
    except Exception as exc:  # noqa: BLE001 - the failure is the result
        return repr(exc)
    return None
