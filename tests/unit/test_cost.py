"""Cost report: pure functions over ledger rows."""

from __future__ import annotations

import datetime as dt

import pytest

from deploy.costs.billing import cost_report, interval, parse_since, split_days
from deploy.ledger import Rental
from deploy.providers.vastai_cli import charges_by_instance

DAY = 86400.0
T0 = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc).timestamp()


def rental(rid, start, end, rate, provider="vast", pid=None):
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
    report = cost_report(rows, now=T0 + 1800, by="instance", provider_charges={"vast": {"1": 0.25}})
    assert [x.key for x in report.lines] == ["1", "2"]
    one, two = report.lines
    assert one.usd == pytest.approx(0.25)  # clipped at now: half an hour
    assert two.open and two.usd == pytest.approx(1.0)
    assert one.theirs_usd == 0.25 and one.diff_usd == pytest.approx(0.0)
    assert two.theirs_usd == 0.0 and two.diff_usd == pytest.approx(-1.0)
    assert report.total_usd == pytest.approx(1.25)


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
    assert charges_by_instance(rows) == {"7": pytest.approx(0.3)}
