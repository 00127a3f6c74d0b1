"""The ledger joined with what providers say: tracked rentals, orphans (our label, not in the ledger) and ghosts
(open in the ledger, gone at the provider).

Every provider that has credentials is asked, even with an empty ledger (a lost ledger must not hide a billing box),
besides every provider the ledger has rented from. A listing that fails, cannot be parsed, or omits a box the provider
still knows is never read as "nothing running": that provider's rows are shown from the ledger alone (unverified) and
the reason is kept in `warnings`.

A row with no provider id whose create may still land (a `vastai create` outlives a killed `deploy`) is `unknown`
until a listing taken after its create window finds nothing by its label: only then is it `unconfirmed`, which
teardown closes as not created.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deploy import ledger as L
from deploy.costs.price import end_bound
from deploy.errors import DeployError, ProviderError
from deploy.ledger import Ledger, Rental
from deploy.ledger.records import adopted
from deploy.ledger.sightings import seen_gone, seen_listed
from deploy.providers import PROVIDERS, Provider, provider_class
from deploy.providers.records import Box
from deploy.settings import DeploySettings


@dataclass
class Entry:
    # tracked | orphan | ghost | ended (by its watchdog) | unconfirmed (intent row, nothing at the provider by its
    # label after its create could have landed) | unknown (intent row whose create may still land: not closed yet)
    kind: str
    provider: str
    rental: Rental | None = None
    box: Box | None = None
    lands_by: float | None = None  # unknown: when its create can no longer rent a box

    def as_dict(self) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "provider": self.provider,
            "rental": self.rental.as_dict() if self.rental else None,
            "live": self.box.as_dict() if self.box else None,
        }
        return {**out, "create_outcome_unknown_until": self.lands_by} if self.lands_by is not None else out


@dataclass
class Reconciliation:
    entries: list[Entry] = field(default_factory=list)
    adopted: list[int] = field(default_factory=list)  # intent rows matched to a box by label (crash recovery)
    warnings: list[str] = field(default_factory=list)  # providers whose listing could not be trusted, and why

    def of_kind(self, kind: str) -> list[Entry]:
        return [e for e in self.entries if e.kind == kind]


def providers_to_check(ledger: Ledger, settings: DeploySettings, explicit: list[str] | None = None) -> list[str]:
    """The providers whose listing is asked: the ones named, else every one with credentials here and every one the
    ledger has rented from; only those that have a listing (a plain SSH host has none)."""
    if explicit:
        names = {provider_class(n).name for n in explicit}  # an unknown name is a one-line UsageError
    else:
        names = {r.provider for r in ledger.rentals()}
        names |= {n for n in PROVIDERS if provider_class(n).listable and provider_class(n).configured(settings)}
    return [n for n in sorted(names, key=PROVIDERS.index) if provider_class(n).listable]


def reconcile(
    ledger: Ledger,
    settings: DeploySettings,
    make: Callable[[str], Provider],
    *,
    providers: list[str] | None = None,
) -> Reconciliation:
    result = Reconciliation()
    names = providers_to_check(ledger, settings, providers)
    checked = []
    for name in names:
        try:
            _reconcile_one(ledger, settings, make(name), result)
        except DeployError as exc:
            result.warnings.append(f"{name}: listing failed, showing the ledger only ({exc})")
            continue
        checked.append(name)
    for rental in ledger.open_rentals():
        if rental.provider not in checked:
            result.entries.append(Entry("tracked", rental.provider, rental, None))
    result.entries.sort(key=lambda e: (e.rental.id if e.rental else 10**9, e.box.id if e.box else ""))
    return result


def _reconcile_one(ledger: Ledger, settings: DeploySettings, provider: Provider, result: Reconciliation) -> None:
    """One provider's listing against the ledger; entries are added only once the whole listing was trusted."""
    name = provider.name
    entries: list[Entry] = []
    listed_at = ledger.clock()  # the listing is taken after this
    asked = ledger.clock()  # a box listed was there by then
    owned = provider.list_owned(settings.label_prefix)
    answered = ledger.clock()  # one missing was gone by then
    by_id = {b.id: b for b in owned}
    for box in owned:
        rental = ledger.by_provider_id(name, box.id)
        if rental is None and box.label:
            rental = _adopt(ledger, box, result)
        if rental is None:
            entries.append(Entry("orphan", name, None, box))
        elif rental.is_open:
            entries.append(Entry("tracked", name, seen_listed(ledger, rental, box, asked), box))
        else:
            entries.append(Entry("orphan", name, rental, box))  # closed in the ledger, yet still there
    for rental in ledger.open_rentals(name):
        if rental.provider_id is None:
            lands_by = create_lands_by(rental, provider)
            if lands_by > listed_at:  # a create still in flight (its process outlived a killed deploy) may rent yet
                entries.append(Entry("unknown", name, rental, None, lands_by))
            else:
                entries.append(Entry("unconfirmed", name, rental, None))
        elif rental.provider_id not in by_id:
            if provider.get(rental.provider_id) is not None:
                raise ProviderError(
                    f"the listing omitted instance {rental.provider_id} (ledger row {rental.id}), which still exists"
                )
            rental = seen_gone(ledger, provider, rental, answered)
            if rental.watchdog is not None and rental.watchdog.running:
                entries.append(Entry("ended", name, _close_self_destroyed(ledger, provider, rental), None))
            else:
                entries.append(Entry("ghost", name, rental, None))
    result.entries.extend(entries)


def unknown_outcome(entry: Entry) -> str:
    """What status and teardown say about an `unknown` entry."""
    until = time.strftime("%H:%M:%S UTC", time.gmtime(entry.lands_by or 0.0))
    label = entry.rental.label if entry.rental else "?"
    return f"create outcome unknown until {until} (a create still in flight may rent a box labelled {label})"


def create_lands_by(rental: Rental, provider: Provider) -> float:
    """When a create that a row without a provider id began can no longer rent a box: the time its provision wrote
    before the create call, else the row's creation (just before it) plus the provider's create window."""
    at = rental.billing.create_lands_by
    return at if at is not None else rental.created_at + provider.create_window_s


def _adopt(ledger: Ledger, box: Box, result: Reconciliation) -> Rental | None:
    """A row whose create crashed before the id was written (or that was closed `not_created` while the create went
    through), found at the provider by its label: open again, its old end void. Its clock starts when the provider
    started the box (else when the intent was written, just before the create call)."""
    candidate = ledger.by_label(box.label or "")
    if candidate is None or candidate.provider_id is not None:
        return None
    ledger.record_rented(candidate.id, box.id, started_at=box.started_at or candidate.created_at)
    ledger.update_meta(candidate.id, **adopted())
    ledger.event(candidate.id, "adopted", "found at the provider by its label after a crash")
    result.adopted.append(candidate.id)
    return ledger.get(candidate.id)


def _close_self_destroyed(ledger: Ledger, provider: Provider, rental: Rental) -> Rental:
    """A rental whose box had a watchdog and is gone: the box destroyed itself (idle, or a cap). The row closes with
    that reason, its cost ending where the provider's charges end within the bound its sightings give, else at the
    last sighting (`seen_gone` asked the charges)."""
    limits = (rental.watchdog and rental.watchdog.limits) or "its limits"
    reason = f"the box destroyed itself: its watchdog ({limits}) ended it, or the provider did"
    return _close_gone(ledger, rental, reason)


def _close_gone(ledger: Ledger, rental: Rental, reason: str) -> Rental:
    bound = end_bound(rental)
    if bound is not None:
        reason = f"{reason}; {bound.describe()}"
    ledger.close_rental(rental.id, L.GONE, reason, ended_at=bound.at if bound else None)
    return ledger.require(rental.id)
