"""The provider interface: the same five names for every place a box can come from.

`search` offers, `rent` one (returns the provider's id), `wait_ready` until it runs, `destroy` it and confirm it is
gone, `list_owned` what carries our label. `get` looks one up. Where an operation makes no sense for a provider it
raises NotImplementedError with a sentence saying why, and callers treat that as "nothing to do here".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from csm_common.gpus import Gpu
from deploy.records import Box, Offer

Log = Callable[[str], None]


@dataclass(frozen=True)
class OfferQuery:
    gpu: Gpu | None = None
    max_price: float | None = None  # USD/h
    min_reliability: float | None = None
    min_cuda: float | None = None
    disk_gb: float | None = None
    limit: int = 20


@dataclass(frozen=True)
class RentRequest:
    label: str  # `<prefix>:<attempt>:<ledger row>`: how orphans are found and crashed attempts adopted
    image: str
    disk_gb: float
    ssh_public_key: str | None = None  # public half only; the private key never leaves this machine
    onstart: str | None = None
    ports: tuple[int, ...] = ()  # box ports to expose on a public address, where the provider can (vast: `-p`)


class Provider(ABC):
    name: ClassVar[str]

    @abstractmethod
    def search(self, query: OfferQuery) -> list[Offer]:
        """Offers that match, cheapest first."""

    @abstractmethod
    def rent(self, offer: Offer, request: RentRequest) -> str:
        """Rent one offer; return the provider's id. Raises OfferUnavailableError when it was taken meanwhile."""

    @abstractmethod
    def wait_ready(self, provider_id: str, *, deadline: float, poll_s: float, log: Log) -> Box:
        """Poll until the box runs and has an SSH endpoint, or raise ProviderError at the monotonic deadline or at
        once on a terminal state."""

    @abstractmethod
    def destroy(self, provider_id: str, *, deadline: float, poll_s: float = 1.0) -> None:
        """Destroy and return only once the provider confirms it is gone."""

    @abstractmethod
    def list_owned(self, label_prefix: str) -> list[Box]:
        """Every box this account holds whose label starts with our prefix. Never [] on a bad answer: raise."""

    @abstractmethod
    def get(self, provider_id: str) -> Box | None:
        """One box, or None when the provider no longer knows it."""
