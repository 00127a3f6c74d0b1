"""A create that went through and then answered an error. vastai 1.9.1 re-sends a create by itself on 502/503/504
(vastai/api/client.py `_RETRYABLE_STATUS`), so the re-send finds the offer rented by our own create and answers 404
`no_such_ask`, which reads as "offer taken". The real `deploy` and the real vastai CLI against the strict emulator
(vast.ai itself cannot be reached here): whatever the answer, the box our label names is adopted, or destroyed by the
rollback, and is never left billing unrecorded; no second box is rented in its place.
"""

from __future__ import annotations

import json
import time

from deploy.ledger import Ledger
from tests.conftest import unknown_running
from tests.fakes.ledger_view import ledger_rows as rows

CREATES = r"^/api/v0/asks/\d+/$"


def resends_reach_the_create(vast) -> None:
    """vast allows one create per 4.5 s, so the CLI's quick re-sends are answered 429 before the create sees them;
    without that interval each re-send gets the answer under test."""
    vast.limiter.intervals.pop("PUT /api/v0/asks/{id}/")


def provision(deploy_cli, *args: str):
    res = deploy_cli("provision", "--gpu", "4090", "--json", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


def end_everything(deploy_cli, vast, deploy_home) -> None:
    down = deploy_cli("teardown", "--all", "--yes")
    assert down.returncode == 0, down.stderr[-2000:]
    assert vast.running_ids() == set() and all(not r.is_open for r in rows(deploy_home))


def test_a_create_the_cli_resends_after_a_502_is_adopted_not_read_as_offer_taken(deploy_cli, vast, deploy_home):
    resends_reach_the_create(vast)
    vast.commit_then_fail(502)  # the CLI's re-send then gets vast's own answer: 404 no_such_ask
    out = provision(deploy_cli, "--max-offers", "2")
    assert vast.count("PUT", CREATES) == 2  # the CLI did re-send the create
    (row,) = rows(deploy_home)  # no `not_created` row, no second offer tried
    assert row.status == "ready" and row.provider_id == out["provider_id"]
    assert set(map(str, vast.instances)) == vast.running_ids() == {row.provider_id}  # exactly one box, ever
    assert unknown_running(vast, deploy_home) == set()
    end_everything(deploy_cli, vast, deploy_home)


def test_a_lost_create_whose_first_lookup_fails_is_recorded_and_destroyed_before_the_next_offer(
    deploy_cli, vast, deploy_home
):
    resends_reach_the_create(vast)
    vast.commit_then_fail(502, 502, 502)  # the CLI's three tries all answer 502: it gives up with a 502
    vast.fail("GET", r"^/api/v1/instances/$", 400, times=1)  # the lookup right after the create is refused once
    provision(deploy_cli, "--max-offers", "2")
    first, second = rows(deploy_home)
    assert first.provider_id is not None and first.status == "destroyed"  # found by its label on the second look
    assert vast.instances[int(first.provider_id)]["_destroyed_at"] is not None
    assert second.status == "ready" and vast.running_ids() == {second.provider_id}
    assert {str(i) for i in vast.instances} == {first.provider_id, second.provider_id}
    assert unknown_running(vast, deploy_home) == set()


def test_with_vasts_create_interval_the_resend_is_refused_then_taken_and_still_one_box_is_rented(
    deploy_cli, vast, deploy_home
):
    """vast as it is: the re-sends 0.15 s later are answered 429 (one create per 4.5 s), the CLI gives up, our
    wrapper sends the create again after the interval and gets 404 `no_such_ask`: the label finds the box."""
    vast.commit_then_fail(502)
    out = provision(deploy_cli, "--max-offers", "2")
    assert vast.count("PUT", CREATES) >= 3 and "PUT /api/v0/asks/{id}/" in vast.limiter.refused
    (row,) = rows(deploy_home)
    assert row.status == "ready" and row.provider_id == out["provider_id"]
    assert set(map(str, vast.instances)) == vast.running_ids() == {row.provider_id}


def test_a_row_without_an_id_closes_as_not_created_only_once_its_create_window_has_passed(
    deploy_cli, vast, deploy_home
):
    """Rows as a killed provision leaves them (intent written, no id): one whose create may still land stays open,
    one whose window has passed with nothing labelled at vast closes `not_created`."""
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        late = ledger.record_intent(
            attempt_id="0ld", provider="vast", label_prefix="csm-deploy", meta={"create_lands_by": time.time() - 1}
        )
        early = ledger.record_intent(
            attempt_id="n3w", provider="vast", label_prefix="csm-deploy", meta={"create_lands_by": time.time() + 600}
        )
    down = deploy_cli("teardown", "--all", "--yes", "--json")
    assert down.returncode == 1 and f"rental {early.id}: create outcome unknown" in down.stderr, down.stderr[-2000:]
    out = json.loads(down.stdout)
    assert [(c["id"], c["status"]) for c in out["closed"]] == [(late.id, "not_created")]
    assert [u["rental"]["id"] for u in out["unknown"]] == [early.id]
    assert [r.is_open for r in rows(deploy_home)] == [False, True]
