"""What a listing says about a rental's billing, written to its row: when a box was last seen alive, when it was
first seen gone, and (for a box adopted by its label) since when its GPU bills.

A box that vanishes outside the flow (its watchdog, the host, the web console) ended somewhere between the last
listing that showed it and the first that did not: deploy/costs/price.py prices it to the end of the provider's
charge rows within that bound, else to the last sighting. A sighting is stamped with the time the listing was asked
(the box was surely there by then); "gone" with the time the answer came back (surely gone by then).
"""

from __future__ import annotations

from deploy.errors import DeployError
from deploy.ledger.records import charges_ended
from deploy.ledger.store import Ledger, Rental
from deploy.providers.base import Provider
from deploy.providers.records import Box, State
from deploy.providers.vast_bids import record_preemption


def seen_listed(ledger: Ledger, rental: Rental, box: Box, asked: float) -> Rental:
    """An open rental's box is in a listing asked at `asked`: it billed then. A box adopted by its label (its own
    provision is gone, so nothing else will note when it began to run) that runs now bills its GPU from the last time
    it was seen not running, else from its start: an upper bound, where the GPU would otherwise not count at all."""
    if box.state is State.GONE:
        return rental
    if box.preempted:  # stopped for a higher bid: noted once (its disk bills on until it is destroyed)
        record_preemption(ledger, rental, box)
    if rental.split_billing and rental.running_at is None and box.state is State.RUNNING and rental.billing.adopted:
        since = rental.last_seen_alive or rental.started_at or rental.created_at
        what = "the last listing that saw it not running" if rental.last_seen_alive else "its start"
        ledger.set_running(rental.id, since, f"running when listed after adoption, counted from {what}")
    ledger.seen_alive(rental.id, asked)
    return ledger.require(rental.id)


def seen_gone(ledger: Ledger, provider: Provider, rental: Rental, answered: float) -> Rental:
    """An open rental's box is in no listing (answered by `answered`) and the provider does not know it: it ended
    before then. The provider's charge rows are asked once for where its billing ended (`meta["charges_end"]`)."""
    ledger.seen_gone(rental.id, answered, f"{rental.provider} {rental.provider_id} is in no listing")
    if not rental.billing.charges_asked:
        try:
            end = provider.ended_at(str(rental.provider_id))
        except DeployError:
            end = None
        if end is not None:
            ledger.update_meta(rental.id, **charges_ended(end))
    return ledger.require(rental.id)
