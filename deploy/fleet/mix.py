"""Interruptible first, on demand after: one replica of a mixed fleet is rented at a bid, and when no bid box comes
up within the deadline (no bid offer, a failed box, or one still not ready when the time is up) that attempt is
rolled back (it destroys what it rented, as any cancelled provision does) and the replica is rented on demand."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from deploy.cancel import CancelToken
from deploy.errors import DeployError, ProvisionCancelled, UsageError
from deploy.fleet.model import FleetSpec
from deploy.ledger import Ledger
from deploy.ledger.fleets import FleetStore
from deploy.providers import make_provider
from deploy.settings import DeploySettings

Attempt = Callable[[bool, CancelToken], int]  # (interruptible, cancel token) -> the new replica's rental id


def deadline_token(parent: CancelToken, seconds: float) -> tuple[CancelToken, threading.Event]:
    """A token set when `parent` is (a signal) or when `seconds` have passed; set the returned event to stop
    watching."""
    child = CancelToken(abandon=False)
    done = threading.Event()
    end = time.monotonic() + seconds

    def watch() -> None:
        while not done.is_set():
            if parent.is_set():
                child.cancel(parent.signum)
                return
            left = end - time.monotonic()
            if left <= 0:
                child.cancel()
                return
            done.wait(min(0.2, left))

    threading.Thread(target=watch, name="bid-deadline", daemon=True).start()
    return child, done


def interruptible_first(
    attempt: Attempt, *, interruptible: bool, deadline_s: float, cancel: CancelToken, log: Callable[[str], None]
) -> int:
    """Rent one replica: on demand when `interruptible` is False; else at a bid, then on demand when the bid attempt
    failed or had not come up within `deadline_s`. A signal (the parent token) stops both and is raised."""
    if not interruptible:
        return attempt(False, cancel)
    token, done = deadline_token(cancel, deadline_s)
    try:
        return attempt(True, token)
    except UsageError:
        raise
    except DeployError as exc:
        if cancel.is_set():
            raise
        timed_out = isinstance(exc, ProvisionCancelled)
        why = f"no interruptible replica came up within {deadline_s:g} s" if timed_out else f"interruptible: {exc}"
    finally:
        done.set()
    log(f"{why}; renting this replica on demand")
    return attempt(False, cancel)


def set_mix(settings: DeploySettings, fleet_name: str, **changes: bool | float | int | None) -> FleetSpec:
    """Change which kinds the fleet's next replicas are (`deploy scale --interruptible --on-demand-min K`); the
    replicas running keep theirs. A provider without bids refuses --interruptible in one line."""
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        spec = FleetSpec.from_dict(fleet.spec)
        new = spec.with_mix(**changes)  # type: ignore[arg-type]
        if new.options.interruptible and not make_provider(new.provider, settings, new.options.ssh).takes_bids:
            raise UsageError(f"the {new.provider} provider has no interruptible (bid) boxes: drop --interruptible")
        if new != spec:
            store.set_spec(fleet, new.as_dict(), f"new replicas: {new.describe_mix()}")
        return new
