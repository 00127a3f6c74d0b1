"""Interruptible (bid) instances as vast runs them: a create with a bid price (`vastai create instance --bid_price`,
the body's `price`) rents at that bid when it reaches the offer's `min_bid`, and a test can have it outbid.

vast runs the highest bid on a machine and stops the others (docs.vast.ai rental types: "Lower priority instances
are paused until they become the highest priority"; SKILL.md of vastai 1.9.1: "When outbid, the instance moves to
`stopped` (not destroyed) and storage charges continue"). An outbid instance keeps `intended_status` running (its
owner did not stop it), `actual_status` and `cur_state` say stopped, its GPU stops billing and its disk bills on
until it is destroyed. A bid under `min_bid` is refused with a 400 (the emulator's choice: vast's exact answer to
it is not documented).
"""

from __future__ import annotations

import threading
from typing import Any

OUTBID_MSG = "stopped: outbid by a higher bid on this machine"


class Bids:
    """Mixed into VastEmulator: the bid fields a create sets, the refusal of a low bid, and the outbid hook."""

    lock: threading.RLock
    instances: dict[int, dict[str, Any]]

    # --- test controls ------------------------------------------------------------------------------------------
    def outbid(self, instance_id: int | str, after_s: float = 0.0) -> None:
        """vast stops this interruptible instance for a higher bid, now or `after_s` seconds of emulated time from
        now (the fault form: it happens on its own, whatever the client is doing)."""
        with self.lock:
            inst = self.instances[int(instance_id)]
            if not inst.get("is_bid"):
                raise ValueError(f"instance {instance_id} is on-demand: vast outbids only interruptible instances")
            inst["_outbid_at"] = self.now() + max(0.0, after_s)
        self.tick()

    def preempted(self, instance_id: int | str) -> bool:
        """Whether vast has stopped this instance for a higher bid (as of now)."""
        with self.lock:
            return self._outbid_now(self.instances[int(instance_id)])

    # --- what a create does with a bid --------------------------------------------------------------------------
    def _bid_refusal(self, offer: dict[str, Any], body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """A create whose bid is under the offer's min_bid (or on an offer that takes no bid): (status, body)."""
        price = body.get("price")
        if price is None:
            return None
        floor = offer.get("min_bid")
        if floor is None:
            return 400, {"success": False, "error": "invalid_args", "msg": f"ask {offer['id']} takes no bids"}
        if float(price) < float(floor):
            msg = f"bid price {float(price):.4f} is below the minimum bid {float(floor):.4f} for ask {offer['id']}"
            return 400, {"success": False, "error": "invalid_args", "msg": msg, "min_bid": floor}
        return None

    @staticmethod
    def _bid_fields(offer: dict[str, Any], body: dict[str, Any], disk_rate_h: float) -> dict[str, Any]:
        """The instance fields a create sets: on-demand at the offer's price, or interruptible at its bid (the GPU
        bills the bid while running; `dph_total` is the bid plus the disk, as the offer's is the price plus it)."""
        price = body.get("price")
        if price is None:
            return {"is_bid": False, "min_bid": offer.get("min_bid"), "_outbid_at": None}
        bid = float(price)
        return {
            "is_bid": True,
            "min_bid": offer.get("min_bid"),
            "dph_total": round(bid + disk_rate_h, 6),
            "_gpu_rate": bid,
            "_outbid_at": None,
        }

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def _outbid_now(self, inst: dict[str, Any]) -> bool:
        at = inst.get("_outbid_at")
        return at is not None and at <= self.now()

    def _apply_outbids(self) -> None:
        """An outbid whose time came stops the GPU's billing at that instant (a stop span that stays open)."""
        for inst in self.instances.values():
            at = inst.get("_outbid_at")
            if at is None or inst.get("_outbid_applied") or at > self.now() or inst["_destroyed_at"] is not None:
                continue
            inst["_outbid_applied"] = True
            if not (inst["_stops"] and inst["_stops"][-1][1] is None):
                inst["_stops"].append((at, None))

    def _outbid_status(self, inst: dict[str, Any]) -> dict[str, Any] | None:
        if not self._outbid_now(inst):
            return None
        return dict(actual_status="stopped", cur_state="stopped", intended_status="running", status_msg=OUTBID_MSG)
