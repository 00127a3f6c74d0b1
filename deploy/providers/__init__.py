"""Where boxes come from: `vast` (real rentals), `ssh` (a box you already have), `local` (this machine).

`make_provider` builds one by name; `host_for` opens the right kind of connection to a rental the ledger knows.
Each provider module is imported only when used, so `deploy --help` never pays for it.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

from deploy.providers.base import OfferQuery, Provider, RentRequest

if TYPE_CHECKING:
    from deploy.ledger import Ledger, Rental
    from deploy.remote import Host
    from deploy.settings import DeploySettings

PROVIDERS = ("vast", "ssh", "local")

__all__ = ["PROVIDERS", "OfferQuery", "Provider", "RentRequest", "host_for", "make_provider"]


def make_provider(name: str, settings: DeploySettings, **options: Any) -> Provider:
    """`options` are the ssh provider's host/port/user (and rate); the others take none."""
    if name == "vast":
        from deploy.providers.vast import VastProvider

        return VastProvider(timeout_s=settings.vast_timeout_s)
    if name == "local":
        from deploy.providers.local import LocalProvider

        return LocalProvider(settings.home_path, rate_usd_h=settings.local_rate)
    if name == "ssh":
        from deploy.providers.ssh import SshProvider

        if not options.get("host"):
            from deploy.errors import UsageError

            raise UsageError("the ssh provider needs --host (and --port/--user if not 22/root)")
        return SshProvider(
            options["host"],
            int(options.get("port") or 22),
            options.get("user") or settings.ssh_user,
            float(options.get("rate") or 0.0),
        )
    from deploy.errors import UsageError

    raise UsageError(f"unknown provider {name!r}; known: {', '.join(PROVIDERS)}")


def host_for(
    rental: Rental, settings: DeploySettings, ledger: Ledger, *, out: IO[str] | None = None, connect_timeout: float = 10
) -> Host:
    """A connection to a rental: LocalHost for `local`, else SSH with the host key pinned in the ledger (TOFU)."""
    from deploy.errors import UsageError
    from deploy.remote import LocalHost, RemoteHost

    if rental.provider == "local":
        return LocalHost(settings.home_path / "local" / str(rental.provider_id), out=out)
    if not rental.ssh_host or not rental.ssh_port:
        raise UsageError(f"rental {rental.id} has no SSH endpoint recorded yet (status {rental.status})")
    return RemoteHost(
        rental.ssh_host,
        rental.ssh_port,
        rental.ssh_user or settings.ssh_user,
        settings.ssh_key_path,
        pinned_key=rental.host_key,
        on_new_key=lambda key: ledger.pin_host_key(rental.id, key),
        connect_timeout=connect_timeout,
        out=out,
    )
