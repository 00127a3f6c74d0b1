"""An account with many instances, made straight in the emulator's state: no create calls (each would wait out
vast's 4.5 s create limit) and no boxes (nothing needs to answer SSH on them; sixty sshds would only load the
machine). What they are for is the listing: `show instances` pages them 25 at a time (listing.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def fill(emu: Any, count: int, label: Callable[[int], str | None] = lambda i: f"someone-else:{i}") -> list[int]:
    """`count` instances, running for an hour already, each on an offer of its own, labelled `label(i)`."""
    ids = []
    with emu.lock:
        for i in range(count):
            offer = emu.add_offer()
            body = {"label": label(i), "image": "img", "disk": 10, "runtype": "ssh_direc ssh_proxy"}
            iid = emu._create(offer, body)
            inst = emu.instances[iid]
            inst["_box"] = None  # never started: the ticker leaves it alone
            inst["start_date"] -= 3600
            ids.append(iid)
    return ids
