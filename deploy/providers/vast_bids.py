"""Interruptible (bid) instances on vast: how an outbid instance reads, and what the ledger keeps of it.

vast runs the highest bid on a machine and stops the others: an outbid instance keeps `intended_status` running
(its owner still wants it) while `actual_status` and `cur_state` say stopped; it bills its disk until destroyed and
resumes only if it regains priority. A stop we asked for says `intended_status` stopped instead. Sources:
docs/provisioning.md#interruptible-bid-instances.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from deploy.ledger import records

if TYPE_CHECKING:
    from deploy.ledger import Ledger, Rental
    from deploy.providers.records import Box

PREEMPTED = "preempted"  # the ledger event written the first time a rental is seen stopped by a higher bid


def is_bid(r: Mapping[str, Any]) -> bool:
    return bool(r.get("is_bid"))


def outbid(r: Mapping[str, Any]) -> bool:
    """An instance record vast stopped for a higher bid: a bid instance whose owner wants it running (intended
    running) while the machine says stopped (`actual_status` stopped/exited, or `cur_state` stopped)."""
    if not is_bid(r):
        return False
    intended = str(r.get("intended_status") or "").lower()
    actual = str(r.get("actual_status") or "").lower()
    cur = str(r.get("cur_state") or "").lower()
    return intended == "running" and (actual in ("stopped", "exited") or cur == "stopped")


def record_preemption(ledger: Ledger, rental: Rental, box: Box) -> bool:
    """The first time a rental's box is seen preempted: the `preempted` event and `preempted_at` in its meta (what
    `deploy cost` and the fleet read). Later sightings add nothing. Returns whether this call recorded it."""
    if not box.preempted:
        return False
    current = ledger.get(rental.id) or rental
    if current.billing.preempted_at is not None:
        return False
    at = ledger.clock()
    ledger.update_meta(rental.id, **records.preempted(at))
    bid = current.billing.bid_usd_h
    said = f"vast stopped instance {box.provider}:{box.id} for a higher bid"
    said += f" (ours {bid:.4f} USD/h)" if bid is not None else ""
    said += f"; {box.detail}" if box.detail else ""
    ledger.event(rental.id, PREEMPTED, said + "; its disk bills until it is destroyed")
    return True
