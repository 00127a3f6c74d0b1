"""The ledger's typed records: a row's meta as older ledgers wrote it reads as them, and what the writers store is
the same JSON as before (so a ledger written by either version reads in the other)."""

from __future__ import annotations

import json

import pytest

from deploy.errors import UsageError
from deploy.ledger import DESTROYED, TUNNEL, Ledger, records
from deploy.ledger.records import ServerRecord, WatchdogRecord
from deploy.remote.endpoint import recorded_endpoint

# what provision wrote into a vast rental's meta before the records existed (keys and value shapes)
LEGACY_META = {
    "image": "vastai/pytorch:2.5",
    "disk_gb": 40.0,
    "create_lands_by": 1000.0,
    "ssh_routes": {"direct": "203.0.113.7:40022", "proxy": "ssh5.vast.ai:12345"},
    "ssh_path": "proxy",
    "hf_token": "env HF_TOKEN",
    "hf_token_file": "csm-deploy/.hf_token",
    "token_file": "/h/tokens/rental-3.token",
    "token_sha256": "ab" * 32,
    "model": "sesame/csm-1b",
    "port": 8000,
    "server_pid": 4242,
    "server_pid_file": ".csm-deploy-run/csm-runtime.pid",
    "server_log": "csm-runtime.log",
    "runtime_mode": "bootstrap",
    "watchdog": {"limits": "idle 60 min", "running": True, "pid": 4243, "state_file": "/w/state.json"},
    "tls_cert": "/h/certs/rental-3.pem",
    "tls_cert_sha256": "cd" * 32,
    "endpoint": "http://127.0.0.1:8000",
    "access": "ssh-tunnel",
    "profile": {"slug": "rtx-4090", "rtf": 0.25, "max_streams": 4},
    "destroy_asked_at": 2000.0,
    "charges_end": 2001.5,
    "adopted": True,
}


def _ledger() -> Ledger:
    clock = iter(range(1000, 100000))
    return Ledger(":memory:", clock=lambda: float(next(clock)))


def test_an_older_rows_meta_reads_as_the_typed_records():
    with _ledger() as ledger:
        rid = ledger.record_intent(attempt_id="a", provider="vast", label_prefix="p", meta=LEGACY_META).id
        ledger.record_connection(rid, ssh_host="ssh5.vast.ai", ssh_port=12345, ssh_user="root")
        r = ledger.require(rid)
    s = r.server
    assert (s.endpoint, s.access, s.port, s.tunnelled, s.scheme) == (
        "http://127.0.0.1:8000",
        TUNNEL,
        8000,
        True,
        "http",
    )
    assert (s.token_file, s.model, s.runtime_mode, s.pid, s.pid_file) == (
        "/h/tokens/rental-3.token",
        "sesame/csm-1b",
        "bootstrap",
        4242,
        ".csm-deploy-run/csm-runtime.pid",
    )
    assert (s.tls_cert, s.hf_token, s.box_hf_token_file) == (
        "/h/certs/rental-3.pem",
        "env HF_TOKEN",
        "csm-deploy/.hf_token",
    )
    assert s.profile == {"slug": "rtx-4090", "rtf": 0.25, "max_streams": 4}
    assert r.ssh.path == "proxy" and r.ssh.user == "root"
    assert r.ssh.route_list() == [("direct", "203.0.113.7", 40022), ("proxy", "ssh5.vast.ai", 12345)]
    assert r.watchdog == WatchdogRecord(running=True, limits="idle 60 min", pid=4243, state_file="/w/state.json")
    b = r.billing
    assert (b.create_lands_by, b.destroy_asked_at, b.charges_end, b.charges_asked, b.adopted) == (
        1000.0,
        2000.0,
        2001.5,
        True,
        True,
    )


def test_an_empty_meta_reads_as_nothing_recorded():
    with _ledger() as ledger:
        r = ledger.require(ledger.record_intent(attempt_id="a", provider="ssh", label_prefix="p").id)
    assert r.server == ServerRecord() and r.watchdog is None and not r.billing.charges_asked
    assert r.ssh.route_list() == []  # no address yet


def test_the_writers_store_the_same_json_as_before():
    """Each writer's keys and values, as the rows that older versions read."""
    with _ledger() as ledger:
        intent = records.rent_intent(image="vastai/pytorch:2.5", disk_gb=40.0, create_lands_by=1000.0)
        rid = ledger.record_intent(attempt_id="a", provider="vast", label_prefix="p", meta=intent).id
        started = records.server_started(
            token_file="/h/tokens/rental-3.token",
            token_sha256="ab" * 32,
            model="sesame/csm-1b",
            port=8000,
            pid=4242,
            pid_file=".csm-deploy-run/csm-runtime.pid",
            log="csm-runtime.log",
            runtime_mode="bootstrap",
        )
        armed = WatchdogRecord(running=True, limits="idle 60 min", pid=4243, state_file="/w/state.json")
        for change in (
            records.ssh_routes({"direct": "203.0.113.7:40022", "proxy": "ssh5.vast.ai:12345"}),
            records.ssh_path("proxy"),
            records.hub_token_placed(source="env HF_TOKEN", box_file="csm-deploy/.hf_token"),
            started,
            armed.to_meta(),
            records.tls_pinned(path="/h/certs/rental-3.pem", sha256="cd" * 32),
            records.server_ready(
                endpoint="http://127.0.0.1:8000",
                access=TUNNEL,
                profile={"slug": "rtx-4090", "rtf": 0.25, "max_streams": 4},
            ),
            records.destroy_asked(2000.0),
            records.charges_ended(2001.5),
            records.adopted(),
        ):
            ledger.update_meta(rid, **change)
        stored = ledger.db.execute("SELECT meta FROM rentals WHERE id=?", (rid,)).fetchone()[0]
    assert json.loads(stored) == LEGACY_META


def test_a_watchdog_that_did_not_arm_keeps_why():
    failed = WatchdogRecord(running=False, limits="idle 60 min", error="exited 3", state_file="/w/state.json")
    assert failed.to_meta() == {
        "watchdog": {"limits": "idle 60 min", "running": False, "error": "exited 3", "state_file": "/w/state.json"}
    }
    assert WatchdogRecord.from_meta(failed.to_meta()) == failed


def test_the_endpoint_lookup_refuses_what_has_no_server():
    with _ledger() as ledger:
        bare = ledger.record_intent(attempt_id="a", provider="ssh", label_prefix="p").id
        tunnel = ledger.record_intent(attempt_id="b", provider="ssh", label_prefix="p").id
        ledger.update_meta(tunnel, endpoint="https://127.0.0.1:8443", access=TUNNEL)  # no port: nothing to tunnel to
        ended = ledger.record_intent(attempt_id="c", provider="ssh", label_prefix="p").id
        ledger.update_meta(ended, endpoint="http://127.0.0.1:8000", access="direct", port=8000)
        ledger.close_rental(ended, DESTROYED, "done")
        with pytest.raises(UsageError, match="no recorded endpoint.*--no-runtime"):
            recorded_endpoint(ledger, bare)
        with pytest.raises(UsageError, match="no recorded endpoint.*pass --endpoint URL"):
            recorded_endpoint(ledger, str(tunnel), missing="pass --endpoint URL")
        with pytest.raises(UsageError, match="is destroyed: its server is gone"):
            recorded_endpoint(ledger, ended)
        ledger.update_meta(tunnel, port=8443)
        found = recorded_endpoint(ledger, tunnel)
    assert found.tunnelled and found.port == 8443 and found.local_url(5000) == "https://127.0.0.1:5000"
