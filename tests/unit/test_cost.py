"""Cost report: pure functions over ledger rows."""

from __future__ import annotations

import datetime as dt

import pytest

from deploy.costs.billing import cost_report, interval, parse_since, split_days
from deploy.ledger import Rental
from deploy.providers.records import Charge
from deploy.providers.vast_records import charges_by_instance

DAY = 86400.0
T0 = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc).timestamp()


def rental(rid, start, end, rate, provider="vast", pid=None, running=None, disk=None):
    return Rental(
        id=rid,
        attempt_id="a",
        provider=provider,
        provider_id=pid or str(rid),
        label=None,
        offer_id=None,
        host_id=None,
        gpu=None,
        gpu_name="RTX 4090",
        rate_usd_h=rate,
        status="destroyed" if end else "ready",
        reason=None,
        ssh_host=None,
        ssh_port=None,
        ssh_user=None,
        host_key=None,
        created_at=start or T0,
        started_at=start,
        ended_at=end,
        meta={},
        running_at=running,
        disk_usd_h=disk,
    )


def test_interval_clips_and_skips_unbilled():
    assert interval(rental(1, None, T0 + 10, 1.0), now=T0 + 20) is None
    assert interval(rental(1, T0, None, 1.0), now=T0 + 20) == (T0, T0 + 20)
    assert interval(rental(1, T0, T0 + 100, 1.0), now=T0 + 200, since=T0 + 50) == (T0 + 50, T0 + 100)


def test_split_days_on_utc_midnight():
    pieces = split_days(T0 + DAY - 3600, T0 + DAY + 7200)
    assert pieces == [("2026-11-20", 3600.0), ("2026-11-21", 7200.0)]


def test_by_instance_with_provider_charges_and_difference():
    rows = [rental(1, T0, T0 + 3600, 0.5), rental(2, T0, None, 2.0), rental(3, None, T0, 9.0)]
    report = cost_report(rows, now=T0 + 1800, by="instance", provider_charges={"vast": {"1": Charge(0.25)}})
    assert [x.key for x in report.lines] == ["1", "2"]
    one, two = report.lines
    assert one.usd == pytest.approx(0.25)  # clipped at now: half an hour
    assert two.open and two.usd == pytest.approx(1.0)
    assert one.theirs_usd == 0.25 and one.diff_usd == pytest.approx(0.0)
    assert two.theirs == "pending" and two.theirs_usd is None and two.diff_usd is None  # no row yet: not $0
    assert report.total_usd == pytest.approx(1.25) and report.pending == 1


def test_split_billing_gpu_while_running_disk_throughout():
    # dph_total 0.5 includes the disk's 0.02: GPU 0.48/h for the half hour it ran, disk 0.02/h for the whole hour
    ran = rental(1, T0, T0 + 3600, 0.5, running=T0 + 1800, disk=0.02)
    never = rental(2, T0, T0 + 3600, 0.5, disk=0.02)  # stuck pulling, then destroyed: its disk alone
    one, two = cost_report([ran, never], now=T0 + 7200).lines
    assert (one.gpu_usd, one.disk_usd, one.usd) == pytest.approx((0.24, 0.02, 0.26))
    assert (two.gpu_usd, two.disk_usd, two.usd) == pytest.approx((0.0, 0.02, 0.02))
    since = cost_report([ran], now=T0 + 7200, since=T0 + 2700).lines[0]  # the last quarter of its life
    assert since.usd == pytest.approx(0.48 / 4 + 0.02 / 4)


def test_by_day_with_provider_charges_spread_over_their_span_and_pending_days():
    rows = [rental(1, T0 + DAY - 1800, T0 + DAY + 1800, 1.0), rental(2, T0 + 3 * DAY, T0 + 3 * DAY + 60, 1.0)]
    theirs = {"vast": {"1": Charge(1.2, T0 + DAY - 1800, T0 + DAY + 1800)}}
    report = cost_report(rows, now=T0 + 4 * DAY, by="day", provider_charges=theirs)
    first, second, third = report.lines
    assert (first.theirs_usd, second.theirs_usd) == pytest.approx((0.6, 0.6))
    assert third.key == "2026-11-23" and third.theirs == "pending" and third.diff_usd is None


def test_by_day_splits_across_midnight():
    rows = [rental(1, T0 + DAY - 1800, T0 + DAY + 1800, 1.0)]
    report = cost_report(rows, now=T0 + 3 * DAY, by="day")
    assert [(x.key, round(x.usd, 6)) for x in report.lines] == [("2026-11-20", 0.5), ("2026-11-21", 0.5)]


def test_bad_by_and_since():
    with pytest.raises(ValueError):
        cost_report([], now=0, by="week")
    with pytest.raises(ValueError, match="not a date"):
        parse_since("yesterday")
    assert parse_since("2026-11-20") == T0
    assert parse_since(str(T0)) == T0


def test_charges_by_instance_sums_sources():
    rows = [
        {"source": "instance-7", "amount": 0.1},
        {"source": "instance-7", "amount": 0.2},
        {"source": "volume-3", "amount": 5},
    ]
    (seven,) = charges_by_instance(rows).values()
    assert seven.amount == pytest.approx(0.3) and seven.items == {}


def test_charges_by_instance_keeps_vasts_items_and_span():
    items = [{"type": t, "amount": a} for t, a in (("gpu", 0.3), ("disk", 0.01), ("bwd", 0.02), ("bwu", 0.03))]
    rows = [{"source": "instance-7", "amount": 0.36, "start": 10, "end": 20, "items": items}]
    (seven,) = charges_by_instance(rows).values()
    assert seven.items == pytest.approx({"gpu": 0.3, "disk": 0.01, "bandwidth": 0.05})
    assert (seven.start, seven.end) == (10, 20)


def test_the_end_is_narrowed_to_vasts_own_only_within_the_destroy_call():
    import dataclasses

    closed = dataclasses.replace(rental(1, T0, T0 + 3600, 1.0), meta={"destroy_asked_at": T0 + 3597})
    within = {"vast": {"1": Charge(0.9992, T0, T0 + 3597.5)}}  # vast took the destroy 2.5 s before vastai exited
    assert cost_report([closed], now=T0 + 7200, provider_charges=within).lines[0].usd == pytest.approx(3597.5 / 3600)
    early = {"vast": {"1": Charge(0.5, T0, T0 + 1800)}}  # rows not brought up to date yet: not an end to trust
    assert cost_report([closed], now=T0 + 7200, provider_charges=early).lines[0].usd == pytest.approx(1.0)
    assert cost_report([rental(1, T0, T0 + 3600, 1.0)], now=T0 + 7200, provider_charges=within).lines[0].usd == 1.0
