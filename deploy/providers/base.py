"""The provider interface: the same names for every place a box can come from.

`search` offers, `rent` one (returns the provider's id), `wait_ready` until it runs, `destroy` it and confirm it is
gone, `list_owned` what carries our label, `get` one. Everything else that differs between providers is asked of the
provider too, never decided by comparing provider names elsewhere: how a box is reached (`host`, `open_host`), where
its server can be reached without a tunnel (`direct_address`), whether destroy ends the box (`owns_boxes`), which
runtime mode and port suit it, its billing records (`charges`). Where an operation makes no sense for a provider it
raises NotImplementedError with a sentence saying why, and callers treat that as "nothing to do here".
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, ClassVar

from csm_common.gpus import Gpu
from deploy.errors import UsageError
from deploy.providers.records import Box, Charge, Offer, SshHost

if TYPE_CHECKING:
    from deploy.ledger import Ledger, Rental
    from deploy.remote.host import Host
    from deploy.settings import DeploySettings

Log = Callable[[str], None]


@dataclass(frozen=True)
class OfferQuery:
    gpu: Gpu | None = None
    max_price: float | None = None  # USD/h
    min_reliability: float | None = None
    min_cuda: float | None = None
    disk_gb: float | None = None
    limit: int = 20
    interruptible: bool = False  # bid offers (vast `--type bid`): each carries the lowest bid it takes


@dataclass(frozen=True)
class RentRequest:
    label: str  # `<prefix>:<attempt>:<ledger row>`: how orphans are found and crashed attempts adopted
    image: str
    disk_gb: float
    ssh_public_key: str | None = None  # public half only; the private key never leaves this machine
    onstart: str | None = None  # a shell script the box runs each time its container starts (never a secret)
    ports: tuple[int, ...] = ()  # box ports to expose on a public address, where the provider can (vast: `-p`)
    user: str | None = None  # the container's user, where the image's own would break SSH (vast: `--user root`)
    bid_usd_h: float | None = None  # rent interruptible at this bid for the GPU (vast `--bid_price`); None: on-demand


@dataclass(frozen=True)
class DirectAddress:
    """Where this machine reaches the server's port without a tunnel, and what the server must bind for that."""

    host: str
    port: int
    bind: str  # 127.0.0.1 (this machine: plain HTTP) or 0.0.0.0 (a mapped public port: HTTPS, the runtime's rule)


class Provider(ABC):
    name: ClassVar[str]
    needs_gpu: ClassVar[bool] = False  # `--gpu` is required to search its offers
    uses_ssh: ClassVar[bool] = True  # boxes are reached over SSH with our key (needs the key before `rent`)
    maps_ports: ClassVar[bool] = False  # can publish a box port on a public address (asked for at `rent`)
    owns_boxes: ClassVar[bool] = True  # destroy ends the box; False: teardown stops our server and releases the row
    listable: ClassVar[bool] = True  # `list_owned` works: status and teardown --all reconcile against it
    runs_here: ClassVar[bool] = False  # the "box" is this machine: its own Python environment can serve
    can_self_destroy: ClassVar[bool] = False  # a box can end its own rental (vast's instance-scoped key): a watchdog
    takes_bids: ClassVar[bool] = False  # rents interruptible boxes at a bid (vast): `--interruptible` is accepted
    # after a create starts, how long it may still create a box (a create process that outlives a killed deploy);
    # a rental with no id is not closed as "not created" before a listing taken that long after its create began
    create_window_s: float = 0.0

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: DeploySettings, ssh: SshHost | None = None) -> Provider:
        """Build one from the settings (and, for the ssh provider, the box it is given)."""

    @classmethod
    def configured(cls, settings: DeploySettings) -> bool:
        """Whether this machine holds what the provider needs to list our boxes (status and teardown --all ask every
        configured provider, even with an empty ledger)."""
        return False

    # --- the five names, plus `get` ---------------------------------------------------------------------------------
    @abstractmethod
    def search(self, query: OfferQuery) -> list[Offer]:
        """Offers that match, cheapest first."""

    @abstractmethod
    def rent(self, offer: Offer, request: RentRequest, on_created: Callable[[str], None] = lambda _id: None) -> str:
        """Rent one offer; return the provider's id. `on_created(id)` is called the moment the provider gave an id,
        before anything else that may fail (the ledger records it there, so every later failure destroys by it).
        Raises OfferUnavailableError when the offer was taken meanwhile (nothing was created)."""

    @abstractmethod
    def wait_ready(
        self, provider_id: str, *, deadline: float, poll_s: float, log: Log, seen: Callable[[Box], None] | None = None
    ) -> Box:
        """Poll until the box runs and has an SSH endpoint, or raise ProviderError at the monotonic deadline or at
        once on a terminal state. `seen(box)` is called with every look at the box (the ledger takes the provider's
        own start time from the first, even when the box then never runs)."""

    @abstractmethod
    def destroy(self, provider_id: str, *, deadline: float, poll_s: float = 1.0) -> float | None:
        """Destroy and return only once the provider confirms it is gone: with the unix time its billing stopped
        (the accepted destroy call), or None when the provider cannot say (the caller takes "now")."""

    @abstractmethod
    def list_owned(self, label_prefix: str) -> list[Box]:
        """Every box this account holds whose label starts with our prefix. Never [] on a bad answer: raise."""

    @abstractmethod
    def get(self, provider_id: str) -> Box | None:
        """One box, or None when the provider no longer knows it."""

    # --- what differs between providers -----------------------------------------------------------------------------
    def default_server_port(self) -> int:
        return 8000

    def direct_address(self, box: Box | None, port: int) -> DirectAddress | None:
        """Where the server's `port` on the box answers from here without a tunnel; None: only through SSH."""
        return None

    def box_started_at(self, host: Host) -> float | None:
        """When the box's container started, as the box recorded it (unix time; None: it does not record it)."""
        return None

    def ended_at(self, provider_id: str) -> float | None:
        """When the provider says a gone instance stopped billing (None: it does not say)."""
        return None

    def charges(self, start: float, end: float) -> dict[str, Charge]:
        """What the provider billed per instance id between two unix times."""
        raise NotImplementedError(f"{self.name} reports no charges of its own")

    def host(
        self,
        rental: Rental,
        settings: DeploySettings,
        ledger: Ledger,
        *,
        out: IO[str] | None = None,
        connect_timeout: float = 10,
    ) -> Host:
        """A connection to a rental over SSH, with the host key pinned in the ledger (trust on first use)."""
        from deploy.remote.host import RemoteHost

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

    def open_host(
        self, rental: Rental, settings: DeploySettings, ledger: Ledger, *, timeout_s: float, poll_s: float, log: Log
    ) -> Host:
        """`host`, once it answers: SSH is retried until `timeout_s` passes (a fresh box's sshd starts late)."""
        from deploy.remote.host import wait_for_ssh

        def make() -> Host:
            return self.host(ledger.require(rental.id), settings, ledger, connect_timeout=min(10.0, timeout_s))

        deadline = time.monotonic() + timeout_s
        return wait_for_ssh(make, deadline=deadline, what=f"rental {rental.id}", poll_s=poll_s, log=log)

    def shell_command(self, rental: Rental, settings: DeploySettings, command: list[str] | None) -> list[str]:
        """The argv that opens a shell on the rental (or runs `command` there), with the pinned host key only."""
        known = settings.home_path / "known_hosts"
        entry = rental.ssh_host if rental.ssh_port == 22 else f"[{rental.ssh_host}]:{rental.ssh_port}"
        known.write_text(f"{entry} {rental.host_key}\n")
        known.chmod(0o600)
        options = [f"UserKnownHostsFile={known}", "StrictHostKeyChecking=yes", "IdentitiesOnly=yes"]
        argv = ["ssh", "-i", str(settings.ssh_key_path), "-p", str(rental.ssh_port)]
        argv += [arg for option in options for arg in ("-o", option)]
        argv.append(f"{rental.ssh_user or settings.ssh_user}@{rental.ssh_host}")
        return [*argv, "--", *command] if command else argv
