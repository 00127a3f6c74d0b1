"""Where boxes come from: `vast` (real rentals), `ssh` (a box you already have), `local` (this machine).

    base.py        the interface every provider implements (and the defaults most share)
    records.py     Offer, Box, State: what providers return
    vast.py        vast.ai, through vastai_cli.py (the only code that runs the `vastai` executable)
    vast_records.py  what vast's JSON means: offers, instances, statuses, charges
    vast_pacing.py   one gate spacing calls per endpoint, and the retry policy
    ssh.py, local.py

`make_provider` builds one by name; `provider_for` the one a ledger row was rented from. Each provider module is
imported only when used, so `deploy --help` never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deploy.errors import UsageError
from deploy.providers.base import DirectAddress, OfferQuery, Provider, RentRequest

if TYPE_CHECKING:
    from deploy.ledger import Rental
    from deploy.providers.records import SshHost
    from deploy.settings import DeploySettings

PROVIDERS = ("vast", "ssh", "local")

__all__ = [
    "PROVIDERS",
    "DirectAddress",
    "OfferQuery",
    "Provider",
    "RentRequest",
    "make_provider",
    "provider_class",
    "provider_for",
]


def provider_class(name: str) -> type[Provider]:
    """The class behind a provider name, without building one (what it can do is on the class)."""
    if name == "vast":
        from deploy.providers.vast import VastProvider

        return VastProvider
    if name == "local":
        from deploy.providers.local import LocalProvider

        return LocalProvider
    if name == "ssh":
        from deploy.providers.ssh import SshProvider

        return SshProvider
    raise UsageError(f"unknown provider {name!r}; known: {', '.join(PROVIDERS)}")


def make_provider(name: str, settings: DeploySettings, ssh: SshHost | None = None) -> Provider:
    """`ssh`: the ssh provider's box (host/port/user); the others take none."""
    return provider_class(name).from_settings(settings, ssh)


def provider_for(rental: Rental, settings: DeploySettings) -> Provider:
    """The provider a ledger row was rented from (an ssh rental's box is named by its provider id)."""
    if rental.provider == "ssh":
        from deploy.providers.ssh import parse_box_id

        return make_provider("ssh", settings, parse_box_id(rental.provider_id or "unknown@unknown:22"))
    return make_provider(rental.provider, settings)
