"""The autoscale decision rule (deploy/fleet/autoscale_policy.py): hysteresis, bounds, cooldown, the spend cap."""

from __future__ import annotations

import random

import pytest

from deploy.fleet.autoscale_policy import Autoscaler, Observation, Policy


def policy(**kw) -> Policy:
    base = dict(
        min_replicas=1, max_replicas=4, target_streams=4, scale_up_after_s=60, scale_down_after_s=600, cooldown_s=120
    )
    base.update(kw)
    return Policy(**base)


def run(scaler: Autoscaler, loads, replicas: int, step: float = 15.0, start: float = 0.0, **obs):
    """Feeds one observation per step, applying each decision at once; returns (decisions, replicas at the end)."""
    decisions = []
    for i, load in enumerate(loads):
        d = scaler.decide(Observation(now=start + i * step, replicas=replicas, active_streams=load, **obs))
        decisions.append(d)
        replicas += d.count if d.action == "add" else -d.count if d.action == "remove" else 0
    return decisions, replicas


def test_grows_only_after_the_load_stays_above_target():
    s = Autoscaler(policy())
    decisions, n = run(s, [9] * 5, replicas=2)  # 4.5/replica at t=0..60
    assert [d.action for d in decisions] == ["hold"] * 4 + ["add"]
    assert decisions[0].reason.endswith("for 0 s of 60 s")
    assert decisions[-1].count == 1 and "4.50/replica > target 4" in decisions[-1].reason
    assert n == 3


def test_a_short_spike_restarts_the_clock():
    s = Autoscaler(policy())
    decisions, n = run(s, [9, 9, 9, 9, 7, 9, 9, 9, 9], replicas=2)
    assert all(d.action == "hold" for d in decisions) and n == 2


def test_queue_or_429_counts_as_high_even_under_target():
    s = Autoscaler(policy(scale_up_after_s=0))
    d = s.decide(Observation(now=0, replicas=2, active_streams=2, queued=1))
    assert d.action == "add" and "queued" in d.reason
    s = Autoscaler(policy(scale_up_after_s=0))
    d = s.decide(Observation(now=0, replicas=2, active_streams=2, rejected_429=3))
    assert d.action == "add" and "429" in d.reason


def test_adds_as_many_as_the_load_needs_up_to_max():
    s = Autoscaler(policy(scale_up_after_s=0))
    d = s.decide(Observation(now=0, replicas=1, active_streams=13))
    assert (d.action, d.count) == ("add", 3)  # ceil(13/4) = 4 replicas
    s = Autoscaler(policy(scale_up_after_s=0))
    d = s.decide(Observation(now=0, replicas=1, active_streams=40))
    assert (d.action, d.count) == ("add", 3)  # max 4
    d = Autoscaler(policy(scale_up_after_s=0)).decide(Observation(now=0, replicas=4, active_streams=40))
    assert d.action == "hold" and "already at --max 4" in d.reason


def test_shrinks_only_when_the_rest_stay_well_under_target_for_the_window():
    s = Autoscaler(policy())
    # 3 replicas, load 6: 6/2 = 3 >= 2.8 (70% of 4): never shrinks, however long.
    decisions, n = run(s, [6] * 100, replicas=3)
    assert all(d.action == "hold" for d in decisions) and n == 3
    s = Autoscaler(policy())
    decisions, n = run(s, [5] * 41, replicas=3)  # 5/2 = 2.5 < 2.8: one may go, after 600 s
    assert [d.action for d in decisions] == ["hold"] * 40 + ["remove"]
    assert decisions[-1].count == 1 and "< 2.8" in decisions[-1].reason and n == 2


def test_no_load_shrinks_to_min_but_never_below():
    s = Autoscaler(policy(min_replicas=2, scale_down_after_s=30))
    decisions, n = run(s, [0] * 50, replicas=4)
    assert [d.action for d in decisions].count("remove") == 1 and n == 2


def test_bounds_come_first_and_pending_replicas_count():
    s = Autoscaler(policy(min_replicas=2))
    d = s.decide(Observation(now=0, replicas=0))
    assert (d.action, d.count) == ("add", 2) and "below --min 2" in d.reason
    d = Autoscaler(policy()).decide(Observation(now=0, replicas=5, active_streams=100))
    assert (d.action, d.count) == ("remove", 1) and "above --max 4" in d.reason
    d = Autoscaler(policy(min_replicas=2)).decide(Observation(now=0, replicas=1, pending=1))
    assert d.action == "hold" and "being added" in d.reason


def test_cooldown_after_a_change():
    s = Autoscaler(policy(scale_up_after_s=0, cooldown_s=100))
    assert s.decide(Observation(now=0, replicas=1, active_streams=6)).action == "add"
    d = s.decide(Observation(now=50, replicas=2, active_streams=20))
    assert d.action == "hold" and "cooldown" in d.reason
    assert s.decide(Observation(now=100, replicas=2, active_streams=20)).action == "add"


def test_spend_cap_blocks_growth_and_says_so():
    s = Autoscaler(policy(scale_up_after_s=0, max_usd_per_h=1.0))
    d = s.decide(Observation(now=0, replicas=2, active_streams=20, usd_per_h=0.8, next_replica_usd_per_h=0.3))
    assert d.action == "hold" and "spend cap" in d.reason and "$1/h" in d.reason
    d = s.decide(Observation(now=1, replicas=2, active_streams=20, usd_per_h=0.4, next_replica_usd_per_h=0.3))
    assert (d.action, d.count) == ("add", 2) and "allows 2 of 2" not in d.reason
    s = Autoscaler(policy(scale_up_after_s=0, max_usd_per_h=1.0))
    d = s.decide(Observation(now=0, replicas=1, active_streams=20, usd_per_h=0.4, next_replica_usd_per_h=0.3))
    assert (d.action, d.count) == ("add", 2) and "allows 2 of 3" in d.reason
    s = Autoscaler(policy(scale_up_after_s=0, max_usd_per_h=1.0))
    d = s.decide(Observation(now=0, replicas=1, active_streams=20, usd_per_h=0.4))
    assert d.action == "hold" and "price is unknown" in d.reason


def test_spend_cap_also_holds_the_minimum():
    d = Autoscaler(policy(min_replicas=2, max_usd_per_h=0.5)).decide(
        Observation(now=0, replicas=1, usd_per_h=0.3, next_replica_usd_per_h=0.3)
    )
    assert d.action == "hold" and "below --min 2" in d.reason and "spend cap" in d.reason


@pytest.mark.parametrize("seed", range(5))
def test_never_flaps_under_noisy_load_around_target(seed):
    """Load per replica wobbling +-25% around the target for 6 hours: at most one add (which takes the load per
    replica under the target), and never a remove afterwards."""
    rng = random.Random(seed)
    s = Autoscaler(policy())
    loads = [round(2 * 4 * (1 + rng.uniform(-0.25, 0.25))) for _ in range(6 * 240)]
    decisions, n = run(s, loads, replicas=2)
    actions = [d.action for d in decisions if d.action != "hold"]
    assert actions.count("remove") == 0 and actions.count("add") <= 1
    assert n in (2, 3)


def test_never_flaps_when_load_steps_between_levels():
    """A load that alternates every 5 minutes between levels on both sides of the target never changes direction
    more than once per window (add then remove only after the full scale-down window)."""
    s = Autoscaler(policy())
    loads = ([10] * 20 + [3] * 20) * 20
    decisions, n = run(s, loads, replicas=2)
    changes = [d.action for d in decisions if d.action != "hold"]
    assert changes == ["add"] and n == 3


@pytest.mark.parametrize(
    "kw",
    [
        dict(min_replicas=0),
        dict(min_replicas=3, max_replicas=2),
        dict(target_streams=0),
        dict(cooldown_s=-1),
        dict(max_usd_per_h=0),
    ],
)
def test_bad_policy_is_refused(kw):
    with pytest.raises(ValueError):
        policy(**kw)


# --- a mixed fleet: which kind each new replica is, and the fallback to on demand -----------------------------------


def spec(interruptible: bool, on_demand_min: int = 0):
    from deploy.fleet.model import FleetSpec
    from deploy.provision.options import ProvisionOptions

    return FleetSpec("vast", ("4090",), ProvisionOptions(interruptible=interruptible), on_demand_min=on_demand_min)


def test_a_mixed_fleet_keeps_its_on_demand_minimum_first():
    assert spec(True, 2).kinds(3, on_demand_live=0) == [False, False, True]
    assert spec(True, 2).kinds(2, on_demand_live=1) == [False, True]
    assert spec(True, 1).kinds(2, on_demand_live=3) == [True, True]
    assert spec(False).kinds(2, on_demand_live=0) == [False, False]
    on_demand = spec(True, 1).options_for("4090", interruptible=False)
    assert not on_demand.interruptible and on_demand.bid_usd_h is None and on_demand.gpu.alias == "4090"
    assert spec(True).options_for("4090").interruptible


def test_on_demand_min_needs_interruptible():
    from deploy.errors import UsageError

    with pytest.raises(UsageError, match="--on-demand-min only applies with --interruptible"):
        spec(False, 1)
    assert spec(True, 2).as_dict()["on_demand_min"] == 2
    assert type(spec(True, 2)).from_dict(spec(True, 2).as_dict()) == spec(True, 2)


def test_interruptible_first_falls_back_to_on_demand():
    from deploy.cancel import CancelToken
    from deploy.errors import NoOffersError, ProvisionCancelled
    from deploy.fleet.mix import interruptible_first

    tried, said = [], []

    def no_bid_offer(bid, token):
        tried.append(bid)
        if bid:
            raise NoOffersError("no bid offer")
        return 7

    assert (
        interruptible_first(no_bid_offer, interruptible=True, deadline_s=5, cancel=CancelToken(), log=said.append) == 7
    )
    assert tried == [True, False] and "renting this replica on demand" in said[0]

    def slow_bid(bid, token):  # a bid box that is not up by the deadline: its attempt sees its token set
        if bid:
            assert token.wait(5), "the deadline never came"
            raise ProvisionCancelled("cancelled while waiting")
        return 8

    said.clear()
    assert interruptible_first(slow_bid, interruptible=True, deadline_s=0.2, cancel=CancelToken(), log=said.append) == 8
    assert said == ["no interruptible replica came up within 0.2 s; renting this replica on demand"]

    parent = CancelToken()
    parent.cancel(15)

    def signalled(bid, token):
        assert token.wait(5) and token.signum == 15
        raise ProvisionCancelled("cancelled")

    with pytest.raises(ProvisionCancelled):  # a signal stops both kinds
        interruptible_first(signalled, interruptible=True, deadline_s=60, cancel=parent, log=said.append)


def test_with_mix_changes_only_what_is_given():
    from deploy.errors import UsageError

    mixed = spec(False).with_mix(interruptible=True, bid_over_min_pct=10, on_demand_min=1)
    assert mixed.options.interruptible and mixed.options.bid_over_min_pct == 10 and mixed.on_demand_min == 1
    assert mixed.with_mix(on_demand_min=2).options == mixed.options
    rebid = mixed.with_mix(bid_usd_h=0.2)  # a new bid replaces both bid settings
    assert (rebid.options.bid_usd_h, rebid.options.bid_over_min_pct, rebid.on_demand_min) == (0.2, None, 1)
    back = mixed.with_mix(interruptible=False)
    assert not back.options.interruptible and back.on_demand_min == 0 and back.options.bid_over_min_pct is None
    assert "at least 1 on demand" in mixed.describe_mix() and back.describe_mix() == "every replica on demand"
    with pytest.raises(UsageError, match="only apply with --interruptible"):
        spec(False).with_mix(bid_usd_h=0.2)
    with pytest.raises(UsageError, match="--on-demand-min only applies with --interruptible"):
        spec(False).with_mix(on_demand_min=1)
