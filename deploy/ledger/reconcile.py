"""The ledger joined with what providers say: tracked rentals, orphans (our label, not in the ledger) and ghosts
(open in the ledger, gone at the provider). A listing that omits a box the provider still knows is an error, so a
broken listing can never read as "nothing running".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deploy import ledger as L
from deploy.errors import ProviderError
from deploy.ledger import Ledger, Rental
from deploy.providers import PROVIDERS, Provider, provider_class
from deploy.providers.records import Box
from deploy.settings import DeploySettings


@dataclass
class Entry:
    kind: str  # tracked | orphan | ghost | unconfirmed (intent row, nothing at the provider) | closed
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

    def of_kind(self, kind: str) -> list[Entry]:
        return [e for e in self.entries if e.kind == kind]


def providers_to_check(ledger: Ledger, explicit: list[str] | None = None) -> list[str]:
    """The providers whose listing is asked: the ones named, else every one the ledger has rented from; only those
    that have a listing (a plain SSH host has none)."""
    names = explicit or sorted({r.provider for r in ledger.rentals()}, key=PROVIDERS.index)
    return [n for n in names if provider_class(n).listable]


def reconcile(
    ledger: Ledger,
    settings: DeploySettings,
    make: Callable[[str], Provider],
    *,
    providers: list[str] | None = None,
) -> Reconciliation:
    result = Reconciliation()
    names = providers_to_check(ledger, providers)
    for name in names:
        provider = make(name)
        owned = provider.list_owned(settings.label_prefix)
        by_id = {b.id: b for b in owned}
        for box in owned:
            rental = ledger.by_provider_id(name, box.id)
            if rental is None and box.label:
                candidate = ledger.by_label(box.label)
                if candidate is not None and candidate.provider_id is None:
                    ledger.record_rented(candidate.id, box.id)
                    ledger.event(candidate.id, "adopted", "found at the provider by its label after a crash")
                    rental = ledger.get(candidate.id)
                    result.adopted.append(candidate.id)
            if rental is None:
                result.entries.append(Entry("orphan", name, None, box))
            elif rental.is_open:
                result.entries.append(Entry("tracked", name, rental, box))
            else:
                result.entries.append(Entry("orphan", name, rental, box))  # closed in the ledger, yet still there
        for rental in ledger.open_rentals(name):
            if rental.provider_id is None:
                result.entries.append(Entry("unconfirmed", name, rental, None))
            elif rental.provider_id not in by_id:
                box = provider.get(rental.provider_id)
                if box is not None:
                    raise ProviderError(
                        f"the {name} listing omitted instance {rental.provider_id} (ledger row {rental.id}), which "
                        "still exists: the listing cannot be trusted, not reporting it as gone"
                    )
                result.entries.append(Entry("ghost", name, rental, None))
    for rental in ledger.open_rentals():
        if rental.provider not in names:
            result.entries.append(Entry("tracked", rental.provider, rental, None))
    result.entries.sort(key=lambda e: (e.rental.id if e.rental else 10**9, e.box.id if e.box else ""))
    return result


def close_ghost(ledger: Ledger, rental: Rental) -> None:
    ledger.close_rental(rental.id, L.GONE, "the provider no longer knows this instance")
