"""The ledger joined with what providers say: tracked rentals, orphans (our label, not in the ledger) and ghosts
(open in the ledger, gone at the provider).

Every provider that has credentials is asked, even with an empty ledger (a lost ledger must not hide a billing box),
besides every provider the ledger has rented from. A listing that fails, cannot be parsed, or omits a box the provider
still knows is never read as "nothing running": that provider's rows are shown from the ledger alone (unverified) and
the reason is kept in `warnings`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deploy import ledger as L
from deploy.errors import DeployError, ProviderError
from deploy.ledger import Ledger, Rental
from deploy.providers import PROVIDERS, Provider, provider_class
from deploy.providers.records import Box
from deploy.settings import DeploySettings


@dataclass
class Entry:
    kind: str  # tracked | orphan | ghost | unconfirmed (intent row, nothing at the provider) | ended (by its watchdog)
    provider: str
    rental: Rental | None = None
    box: Box | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "provider": self.provider,
            "rental": self.rental.as_dict() if self.rental else None,
            "live": self.box.as_dict() if self.box else None,
        }


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
        names = set(explicit)
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
    owned = provider.list_owned(settings.label_prefix)
    by_id = {b.id: b for b in owned}
    for box in owned:
        rental = ledger.by_provider_id(name, box.id)
        if rental is None and box.label:
            rental = _adopt(ledger, box, result)
        if rental is None:
            entries.append(Entry("orphan", name, None, box))
        elif rental.is_open:
            entries.append(Entry("tracked", name, rental, box))
        else:
            entries.append(Entry("orphan", name, rental, box))  # closed in the ledger, yet still there
    for rental in ledger.open_rentals(name):
        if rental.provider_id is None:
            entries.append(Entry("unconfirmed", name, rental, None))
        elif rental.provider_id not in by_id:
            if provider.get(rental.provider_id) is not None:
                raise ProviderError(
                    f"the listing omitted instance {rental.provider_id} (ledger row {rental.id}), which still exists"
                )
            if (rental.meta.get("watchdog") or {}).get("running"):
                entries.append(Entry("ended", name, _close_self_destroyed(ledger, provider, rental), None))
            else:
                entries.append(Entry("ghost", name, rental, None))
    result.entries.extend(entries)


def _adopt(ledger: Ledger, box: Box, result: Reconciliation) -> Rental | None:
    """An intent row whose create crashed before the id was written, found at the provider by its label. Its clock
    starts when the provider started the box (else when the intent was written, just before the create call)."""
    candidate = ledger.by_label(box.label or "")
    if candidate is None or candidate.provider_id is not None:
        return None
    ledger.record_rented(candidate.id, box.id, started_at=box.started_at or candidate.created_at)
    ledger.event(candidate.id, "adopted", "found at the provider by its label after a crash")
    result.adopted.append(candidate.id)
    return ledger.get(candidate.id)


def _close_self_destroyed(ledger: Ledger, provider: Provider, rental: Rental) -> Rental:
    """A rental whose box had a watchdog and is gone: the box destroyed itself (idle, or a cap). The row closes with
    that reason, its cost ending where the provider's billing ended (else now)."""
    try:
        ended = provider.ended_at(str(rental.provider_id))
    except DeployError:
        ended = None
    limits = rental.meta["watchdog"].get("limits", "its limits")
    reason = f"the box destroyed itself: its watchdog ({limits}) ended it, or the provider did"
    ledger.close_rental(rental.id, L.GONE, reason, ended_at=ended)
    return ledger.require(rental.id)


def close_ghost(ledger: Ledger, rental: Rental) -> None:
    ledger.close_rental(rental.id, L.GONE, "the provider no longer knows this instance")
