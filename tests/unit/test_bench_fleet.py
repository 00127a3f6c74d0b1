"""The fleet cost bench's simulation (bench/fleet_sim.py) on short traces: its own logic is what the bench's numbers
stand on. The autoscaled fleets are driven by the real policy (deploy/fleet/autoscale_policy.py)."""

from __future__ import annotations

import dataclasses

import pytest

from bench.fleet_sim import Request, Setup, Sim, day_trace, simulate, sized_for_peak
from deploy.fleet.autoscale_policy import Policy

BASE = Setup("t", streams=4, rtf=0.5, boot_s=300, queue_timeout_s=30, on_demand_usd_h=0.35, interruptible_usd_h=0.16)
HOUR = 3600


def steady(rpm: float, seconds: int, audio_s: float = 12.0) -> list[Request]:
    """`rpm` requests a minute, evenly spaced."""
    gap = 60 / rpm
    return [Request(int(i * gap), audio_s) for i in range(int(seconds / gap))]


def test_a_trace_with_no_load_keeps_the_minimum_and_bills_only_it():
    policy = Policy(min_replicas=2, max_replicas=5, target_streams=3, scale_down_after_s=60, cooldown_s=0)
    res = simulate([], dataclasses.replace(BASE, policy=policy), seconds=2 * HOUR)
    assert (res.replicas_min, res.replicas_max, res.requests, res.rejected_429) == (2, 2, 0, 0)
    assert res.usd == pytest.approx(2 * 2 * 0.35) and res.interruptible_usd == 0
    assert res.usd_per_audio_h is None  # nothing served: no price per hour of audio, not $0


def test_a_fixed_fleet_sized_for_the_peak_refuses_nothing_and_one_fewer_would():
    trace = steady(rpm=200, seconds=1800)  # 200 x 6 s of work a minute = 20 streams at once
    n, res = sized_for_peak(trace, BASE, seconds=1800)
    assert res.rejected_429 == 0 and res.served + res.unfinished == len(trace)
    assert n == 5  # 20 streams / 4 per replica
    smaller = simulate(trace, dataclasses.replace(BASE, fixed=n - 1), seconds=1800)
    assert smaller.rejected_429 > 0  # over capacity: queued, then 429 after the timeout
    assert res.usd == pytest.approx(n * 0.5 * 0.35)


def test_the_autoscaled_fleet_grows_with_the_load_then_shrinks_back():
    trace = [q for q in steady(rpm=150, seconds=2 * HOUR) if HOUR / 2 <= q.at < HOUR]  # a half-hour burst
    policy = Policy(min_replicas=1, max_replicas=6, target_streams=3)
    res = simulate(trace, dataclasses.replace(BASE, policy=policy), seconds=2 * HOUR)
    assert res.replicas_max >= 4 and res.replicas_by_hour[-1] < 2
    assert res.requests == res.served + res.rejected_429 + res.cut + res.unfinished


def test_costs_add_up_kinds_and_requests_in_a_mixed_fleet_with_preemptions():
    trace = day_trace(seed=3, peak_rpm=120, night_rpm=60, seconds=2 * HOUR)
    setup = dataclasses.replace(
        BASE, policy=Policy(1, 6, 3.0), on_demand_min=1, preempt_per_h=2.0, seed=5, name="mixed"
    )
    sim = Sim(setup, 2 * HOUR)
    res = sim.run(trace)
    assert res.preemptions > 0 and res.cut >= 0
    by_kind = {True: 0.0, False: 0.0}
    for r in sim.replicas:
        assert r.ended is not None and r.ended >= r.created
        by_kind[r.interruptible] += (r.ended - r.created) / 3600
    assert res.interruptible_h == pytest.approx(by_kind[True]) and res.on_demand_h == pytest.approx(by_kind[False])
    assert res.usd == pytest.approx(by_kind[True] * 0.16 + by_kind[False] * 0.35)
    assert res.on_demand_h == pytest.approx(2.0)  # K = 1 on demand all along, never preempted
    assert res.requests == len(trace) == res.served + res.rejected_429 + res.cut + res.unfinished
    assert res.audio_served_s == pytest.approx(sum(q.audio_s for q in trace) * res.served / len(trace), rel=0.2)


def test_the_same_seed_gives_the_same_day():
    a = day_trace(seed=11, peak_rpm=60, night_rpm=6, seconds=HOUR)
    assert a == day_trace(seed=11, peak_rpm=60, night_rpm=6, seconds=HOUR)
    assert a != day_trace(seed=12, peak_rpm=60, night_rpm=6, seconds=HOUR)
    assert all(1.0 <= q.audio_s <= 60.0 for q in a) and len(a) > 0
