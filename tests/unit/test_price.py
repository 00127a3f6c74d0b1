"""The one price of a rental (deploy/costs/price.py): where its billing ended, then rate x time or vast's split; the
same number in `deploy cost` and the fleet lines. Pure functions over ledger rows."""

from __future__ import annotations

import dataclasses

import pytest

from deploy.costs.billing import cost_report
from deploy.costs.price import CHARGES, LAST_SEEN, end_bound, price
from deploy.providers.records import Charge
from tests.unit.test_cost import T0, rental


def ghost(**changes):
    """A vast rental (GPU 0.48/h, disk 0.02/h) that ran from T0 + 60, last seen alive at T0 + 1800 and first seen gone
    at T0 + 3600; its row is still open."""
    base = rental(1, T0, None, 0.5, running=T0 + 60, disk=0.02)
    return dataclasses.replace(base, **{"last_seen_alive": T0 + 1800, "gone_seen_at": T0 + 3600, **changes})


def test_split_and_rate_times_time_through_the_one_function():
    ran = rental(1, T0, T0 + 3600, 0.5, running=T0 + 1800, disk=0.02)
    spend = price(ran, now=T0 + 7200)
    assert (spend.gpu_usd, spend.disk_usd, spend.usd) == pytest.approx((0.24, 0.02, 0.26))
    assert price(rental(2, T0, None, 2.0, provider="ssh"), now=T0 + 1800).usd == pytest.approx(1.0)
    assert price(rental(3, None, None, 9.0), now=T0 + 1800).usd == 0.0  # never billed


def test_a_ghost_is_priced_to_its_last_sighting_not_to_now():
    bound = end_bound(ghost())
    assert (bound.lo, bound.hi, bound.at, bound.source) == (T0 + 1800, T0 + 3600, T0 + 1800, LAST_SEEN)
    later = price(ghost(), now=T0 + 10 * 3600)
    assert later.usd == pytest.approx(0.48 * 1740 / 3600 + 0.02 * 0.5)
    assert later == price(ghost(), now=T0 + 20 * 3600)  # it does not grow
    assert "ended between 2026-11-20 00:30:00 UTC and 2026-11-20 01:00:00 UTC" in bound.describe()


def test_a_ghost_is_priced_to_the_end_of_vasts_charges_within_its_bound():
    at = lambda end: end_bound(ghost(), Charge(0.3, T0, end)).at  # noqa: E731
    assert at(T0 + 2400) == T0 + 2400
    assert at(T0 + 900) == T0 + 1800  # rows not brought up to date: never before it was seen alive
    assert at(T0 + 9000) == T0 + 3600  # never after it was seen gone
    assert end_bound(ghost(), Charge(0.3, T0, T0 + 2400)).source == CHARGES
    stored = ghost(meta={"charges_end": T0 + 3000})  # what the charges said when status saw it gone
    assert end_bound(stored).at == T0 + 3000 and end_bound(stored).source == CHARGES


def test_a_ghost_never_seen_alive_after_its_start_is_bounded_by_its_running_start():
    bound = end_bound(ghost(last_seen_alive=None))
    assert (bound.lo, bound.at) == (T0 + 60, T0 + 60)


def test_rows_not_gone_have_no_bound_and_keep_the_destroy_narrowing():
    assert end_bound(rental(1, T0, None, 0.5)) is None
    closed = dataclasses.replace(rental(1, T0, T0 + 3600, 1.0), meta={"destroy_asked_at": T0 + 3597})
    assert price(closed, now=T0 + 7200, charge=Charge(1.0, T0, T0 + 3598)).usd == pytest.approx(3598 / 3600)


def test_cost_report_shows_the_bound_and_prices_as_the_one_function():
    report = cost_report([ghost()], now=T0 + 7200, provider_charges={"vast": {"1": Charge(0.3, T0, T0 + 2400)}})
    (line,) = report.lines
    assert not line.open and line.ended_between == (T0 + 1800, T0 + 3600) and line.ended_at == T0 + 2400
    assert line.end_source == CHARGES
    assert line.usd == price(ghost(), now=T0 + 7200, charge=Charge(0.3, T0, T0 + 2400)).usd
    (day,) = cost_report([ghost()], now=T0 + 7200, by="day").lines
    assert not day.open and day.usd == pytest.approx(price(ghost(), now=T0 + 7200).usd)
