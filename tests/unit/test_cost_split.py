"""Interruptible and on-demand apart, preemptions, and a fleet window's USD per hour of audio: ledger rows in a real
SQLite ledger (its clock set by the test), priced by the one price function."""

from __future__ import annotations

import datetime as dt

import pytest

from deploy.costs.audio import (
    AUDIO_SAMPLE,
    SAMPLE_GAP_S,
    Point,
    counted_span,
    last_reading,
    points_from_events,
    record_sample,
)
from deploy.costs.billing import cost_report
from deploy.costs.price import price
from deploy.costs.split import (
    DAY_S,
    HOUR_S,
    INTERRUPTIBLE,
    ON_DEMAND,
    PREEMPTED,
    cost_split,
    describe_window,
    fleet_window,
)
from deploy.ledger import Ledger
from deploy.ledger.records import bid_placed, preempted

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc).timestamp()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def ledger(tmp_path):
    clock = Clock(T0)
    with Ledger(tmp_path / "ledger.sqlite3", clock=clock) as led:
        led.test_clock = clock  # type: ignore[attr-defined]
        yield led


def rent(ledger, *, at: float, rate: float, bid: float | None = None, disk: float | None = None) -> int:
    """A rental started at `at`: on-demand, or interruptible at `bid` (its rate is the bid plus its disk)."""
    ledger.test_clock.t = at
    meta = bid_placed(bid) if bid is not None else {}
    row = ledger.record_intent(attempt_id="a", provider="vast", label_prefix="t", gpu_name="RTX 4090",
                               rate_usd_h=rate, disk_usd_h=disk, meta=meta)  # fmt: skip
    ledger.record_rented(row.id, f"9{row.id}", started_at=at)
    if disk is not None:
        ledger.set_running(row.id, at, "test")
    return row.id


def end(ledger, rid: int, at: float, *, preempted_event: bool = False) -> None:
    ledger.test_clock.t = at
    if preempted_event:
        ledger.event(rid, PREEMPTED, "outbid")
    ledger.close_rental(rid, "destroyed", ended_at=at)


def events_of(ledger) -> dict[int, list[dict]]:
    return {r.id: ledger.events(r.id) for r in ledger.rentals()}


def test_the_two_kinds_add_up_to_the_total_and_preemptions_are_counted_in_their_window(ledger):
    on_demand = rent(ledger, at=T0, rate=0.40)
    outbid = rent(ledger, at=T0, rate=0.20, bid=0.18)
    end(ledger, outbid, T0 + HOUR_S, preempted_event=True)
    rent(ledger, at=T0 + HOUR_S, rate=0.22, bid=0.20)  # its replacement, still running
    end(ledger, on_demand, T0 + 2 * HOUR_S)
    now = T0 + 3 * HOUR_S
    rows, events = ledger.rentals(), events_of(ledger)

    split = cost_split(rows, now=now, events=events)
    assert (split.on_demand.rentals, split.interruptible.rentals, split.preemptions) == (1, 2, 1)
    assert split.on_demand.hours == pytest.approx(2.0) and split.on_demand.usd == pytest.approx(0.80)
    assert split.interruptible.hours == pytest.approx(3.0)
    assert split.interruptible.usd == pytest.approx(0.20 + 0.22 * 2)
    report = cost_report(rows, now=now, events=events)
    assert split.usd == pytest.approx(report.total_usd)  # nothing counted twice or left out
    assert report.split.as_dict() == split.as_dict()
    kinds = {x.key: (x.kind, x.bid_usd_h) for x in report.lines}
    assert kinds[str(on_demand)] == (ON_DEMAND, None) and kinds[str(outbid)] == (INTERRUPTIBLE, 0.18)

    later = cost_split(rows, now=now, since=T0 + 1.5 * HOUR_S, events=events)  # after the preemption
    assert later.preemptions == 0
    assert later.on_demand.hours == pytest.approx(0.5) and later.interruptible.hours == pytest.approx(1.5)
    assert "1 preemption(s)" in split.describe() and "interruptible 2 rental(s) 3.000 h $0.6400" in split.describe()


def test_a_preemption_recorded_only_in_billing_counts_once_and_an_event_with_it_once(ledger):
    only_meta = rent(ledger, at=T0, rate=0.2, bid=0.2)
    ledger.update_meta(only_meta, **preempted(T0 + 60))
    end(ledger, only_meta, T0 + 120)
    both = rent(ledger, at=T0, rate=0.2, bid=0.2)
    ledger.update_meta(both, **preempted(T0 + 90))
    end(ledger, both, T0 + 90, preempted_event=True)
    split = cost_split(ledger.rentals(), now=T0 + HOUR_S, events=events_of(ledger))
    assert split.preemptions == 2 and split.on_demand.rentals == 0


def test_vast_split_billing_is_priced_as_deploy_cost_prices_it(ledger):
    """An interruptible vast rental bills its bid while it runs and its disk from create: the split takes price()."""
    rid = rent(ledger, at=T0, rate=0.25, bid=0.20, disk=0.05)
    (row,) = ledger.rentals()
    split = cost_split([row], now=T0 + HOUR_S)
    assert split.interruptible.usd == pytest.approx(price(row, now=T0 + HOUR_S).usd) == pytest.approx(0.25)
    assert row.id == rid and split.on_demand.usd == 0


def test_a_window_nobody_read_is_unknown_never_zero(ledger):
    rent(ledger, at=T0 - DAY_S, rate=0.40)
    now = T0 + HOUR_S
    w = fleet_window(ledger.rentals(), now=now, seconds=HOUR_S, points={})
    assert w.usd == pytest.approx(0.40) and w.audio_seconds is None and w.usd_per_audio_h is None
    assert w.as_dict()["usd_per_audio_h"] is None and w.coverage == 0.0
    line = describe_window("last hour", w)
    assert "per hour of audio: unknown" in line and "$0.0000 per hour of audio" not in line


def test_usd_per_audio_hour_from_the_counters_read_in_the_window(ledger):
    now = T0 + 2 * DAY_S
    young = rent(ledger, at=now - 0.5 * HOUR_S, rate=1.0)  # started inside the last hour: its counter began at 0
    old = rent(ledger, at=T0, rate=0.40, bid=0.38)  # read 2 h and 30 min ago, and now
    points = {
        young: [Point(now, 360.0)],
        old: [Point(now - 2 * HOUR_S, 100.0), Point(now - 0.5 * HOUR_S, 400.0), Point(now, 1000.0)],
    }
    w = fleet_window(ledger.rentals(), now=now, seconds=HOUR_S, points=points)
    assert w.audio_seconds == pytest.approx(360 + 600)
    counted = 1.0 * 0.5 + 0.40 * 0.5  # each replica priced over exactly the span its counter covers
    assert w.counted_usd == pytest.approx(counted)
    assert w.usd_per_audio_h == pytest.approx(counted / (960 / 3600))
    assert w.usd == pytest.approx(1.0 * 0.5 + 0.40 * 1.0) and w.coverage == pytest.approx(counted / 0.9)
    day = fleet_window(ledger.rentals(), now=now, seconds=DAY_S, points=points)
    assert day.audio_seconds == pytest.approx(360 + 900) and day.split.interruptible.hours == pytest.approx(24)
    assert "per hour of audio (1260.0 s of audio" in describe_window("last day", day)

    idle = fleet_window(ledger.rentals(), now=now, seconds=HOUR_S, points={old: [Point(now - 600, 5), Point(now, 5)]})
    assert idle.audio_seconds == 0 and idle.usd_per_audio_h is None  # spent, nothing served: no ratio, not $0
    assert "no audio served" in describe_window("last hour", idle)


def test_a_counter_that_went_down_restarted_and_the_run_starts_after_it():
    points = [Point(100, 50.0), Point(200, 500.0), Point(300, 20.0), Point(400, 80.0)]
    assert counted_span(0.0, points, since=0.0, now=500) == (Point(300, 20.0), Point(400, 80.0))
    assert counted_span(0.0, points[:2], since=0.0, now=500) == (Point(0.0, 0.0), Point(200, 500.0))
    assert counted_span(0.0, points[:2], since=150, now=500) is None  # one reading inside: no span
    assert counted_span(0.0, [Point(600, 9.0)], since=0.0, now=500) is None  # a reading after now is not one


def test_readings_are_kept_in_the_ledger_at_most_one_a_minute(ledger):
    rid = rent(ledger, at=T0, rate=0.4)
    assert record_sample(ledger, rid, 12.5, last=None)
    (first,) = points_from_events(ledger.events(rid))
    assert first == Point(T0, 12.5)
    ledger.test_clock.t = T0 + SAMPLE_GAP_S - 1
    assert not record_sample(ledger, rid, 30.0, last=first)
    ledger.test_clock.t = T0 + SAMPLE_GAP_S
    assert record_sample(ledger, rid, 30.0, last=first)
    assert [p.seconds for p in points_from_events(ledger.events(rid))] == [12.5, 30.0]
    assert last_reading(ledger, rid) == Point(T0 + SAMPLE_GAP_S, 30.0)
    ledger.test_clock.t = T0 + 2 * SAMPLE_GAP_S - 1  # the autoscale loop looks every 15 s: the ledger says the last
    assert not record_sample(ledger, rid, 31.0)
    ledger.test_clock.t = T0 + 2 * SAMPLE_GAP_S
    assert record_sample(ledger, rid, 31.0) and last_reading(ledger, rid) == Point(T0 + 2 * SAMPLE_GAP_S, 31.0)
    ledger.event(rid, AUDIO_SAMPLE, "not a number")  # unreadable rows are no reading
    assert len(points_from_events(ledger.events(rid))) == 3 and last_reading(ledger, rid) is None
