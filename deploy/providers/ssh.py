"""A box you already have (host, port, user, key): nothing to rent or destroy, only a ledger row and SSH."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from deploy.errors import UsageError
from deploy.providers.base import Log, OfferQuery, Provider, RentRequest
from deploy.providers.records import Box, Offer, SshHost, State

if TYPE_CHECKING:
    from deploy.settings import DeploySettings


class SshProvider(Provider):
    name = "ssh"
    listable = False  # a plain SSH host has no provider-side listing
    owns_boxes = False  # teardown stops the server provision started there, then releases the ledger row

    def __init__(self, host: str, port: int = 22, user: str = "root", rate_usd_h: float = 0.0):
        # `address`, not `host`: Provider.host() is the method that connects to a rental
        self.address, self.port, self.user, self.rate = host, int(port), user, rate_usd_h

    @property
    def box_id(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    @classmethod
    def from_settings(cls, settings: DeploySettings, ssh: SshHost | None = None) -> SshProvider:
        if ssh is None or not ssh.host:
            raise UsageError("the ssh provider needs --host (and --port/--user if not 22/root)")
        return cls(ssh.host, int(ssh.port or 22), ssh.user or settings.ssh_user)

    def search(self, query: OfferQuery) -> list[Offer]:
        name = query.gpu.vast_name if query.gpu else "unknown"
        return [Offer(provider=self.name, id=self.box_id, gpu_name=name, price_usd_h=self.rate, host_id=self.box_id)]

    def rent(self, offer: Offer, request: RentRequest, on_created: Callable[[str], None] = lambda _id: None) -> str:
        on_created(self.box_id)
        return self.box_id  # the box exists already; the ledger row is the "rental"

    def _box(self) -> Box:
        return Box(
            self.name, self.box_id, State.RUNNING, "running", None, self.address, self.port, self.user, self.rate
        )

    def wait_ready(
        self, provider_id: str, *, deadline: float, poll_s: float, log: Log, seen: Callable[[Box], None] | None = None
    ) -> Box:
        return self._box()  # "running" is all we can say; the connect step waits for SSH itself

    def destroy(self, provider_id: str, *, deadline: float, poll_s: float = 1.0) -> float | None:
        raise NotImplementedError("an SSH host you brought is not ours to destroy; teardown only closes its ledger row")

    def list_owned(self, label_prefix: str) -> list[Box]:
        raise NotImplementedError("a plain SSH host has no provider-side listing to reconcile against")

    def get(self, provider_id: str) -> Box | None:
        return self._box() if provider_id == self.box_id else None


def parse_box_id(box_id: str) -> SshHost:
    """`user@host:port` (an ssh rental's provider id) -> the box it names."""
    user, _, rest = box_id.partition("@")
    host, _, port = rest.rpartition(":")
    return SshHost(host=host, port=int(port or 22), user=user)
