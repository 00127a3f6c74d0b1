"""vast.ai, through the vastai CLI wrapper in deploy/providers/vastai_cli.py (the only code that runs it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deploy.errors import OfferUnavailableError, ProviderError
from deploy.providers.base import DirectAddress, Log, OfferQuery, Provider, RentRequest
from deploy.providers.records import TERMINAL, Box, Offer, State
from deploy.providers.vastai_cli import VastCli, VastError, api_key_source, charges_by_instance

if TYPE_CHECKING:
    from deploy.settings import DeploySettings

# HTTP statuses on create that mean "this offer, not you": try the next one.
_OFFER_GONE = {400, 404, 409, 410}


class VastProvider(Provider):
    name = "vast"
    needs_gpu = True
    maps_ports = True
    can_self_destroy = True  # CONTAINER_API_KEY in the container destroys that one instance

    def __init__(self, cli: VastCli | None = None, *, timeout_s: float = 120.0):
        self._cli, self.timeout_s = cli, timeout_s

    @property
    def cli(self) -> VastCli:
        """The CLI wrapper, found on first use (so a bad option is reported before a missing CLI)."""
        if self._cli is None:
            self._cli = VastCli(timeout_s=self.timeout_s)
        return self._cli

    @classmethod
    def from_settings(cls, settings: DeploySettings, **options: Any) -> VastProvider:
        return cls(timeout_s=settings.vast_timeout_s)

    @classmethod
    def configured(cls, settings: DeploySettings) -> bool:
        return api_key_source() != "missing"

    def search(self, query: OfferQuery) -> list[Offer]:
        if query.gpu is None:
            raise ProviderError("vast needs --gpu to search offers")
        return self.cli.search_offers(
            query.gpu.vast_name,
            max_price=query.max_price,
            min_reliability=query.min_reliability,
            min_cuda=query.min_cuda,
            disk_gb=query.disk_gb,
            limit=query.limit,
        )

    def rent(self, offer: Offer, request: RentRequest, on_created: Callable[[str], None] = lambda _id: None) -> str:
        try:
            iid = self.cli.create_instance(
                offer.id,
                image=request.image,
                disk_gb=request.disk_gb,
                label=request.label,
                onstart=request.onstart,
                ports=request.ports,
            )
        except VastError as exc:
            if exc.status_code in _OFFER_GONE:
                raise OfferUnavailableError(f"offer {offer.id} was not rentable: {exc}") from exc
            raise
        on_created(iid)
        if request.ssh_public_key:
            self.cli.attach_ssh(iid, request.ssh_public_key)
        return iid

    def wait_ready(self, provider_id: str, *, deadline: float, poll_s: float, log: Log) -> Box:
        last = "not polled yet"
        while True:
            try:
                box = self.cli.show_instance(provider_id)
            except VastError as exc:
                if exc.status_code in (401, 403):
                    raise
                box, last = None, f"poll failed: {exc}"  # transient: keep polling until the deadline
            else:
                if box is None:
                    raise ProviderError(f"vast instance {provider_id} disappeared while we waited for it to run")
                last = f"{box.raw_status or 'no status'}{': ' + box.detail if box.detail else ''}"
                if box.state is State.RUNNING and box.ssh_host and box.ssh_port:
                    log(f"vast instance {provider_id}: running (1/1 ready)")
                    return box
                if box.state in TERMINAL:
                    raise ProviderError(f"vast instance {provider_id} stopped coming up: {last}")
            if time.monotonic() >= deadline:
                raise ProviderError(f"vast instance {provider_id} was not running before the deadline (last: {last})")
            log(f"vast instance {provider_id}: {last} (0/1 ready)")
            time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))

    def destroy(self, provider_id: str, *, deadline: float, poll_s: float = 1.0) -> None:
        try:
            self.cli.destroy_instance(provider_id)
        except VastError as exc:
            if exc.status_code != 404:  # already gone is what we wanted
                raise
        while True:
            box = self.cli.show_instance(provider_id)
            if box is None or box.state is State.GONE:
                return
            if time.monotonic() >= deadline:
                raise ProviderError(f"vast instance {provider_id} still listed ({box.raw_status}) after destroy")
            time.sleep(poll_s)

    def list_owned(self, label_prefix: str) -> list[Box]:
        return [b for b in self.cli.show_instances() if (b.label or "").startswith(label_prefix + ":")]

    def get(self, provider_id: str) -> Box | None:
        return self.cli.show_instance(provider_id)

    def direct_address(self, box: Box | None, port: int) -> DirectAddress | None:
        """The public address vast mapped the server's port to (`ports`, `public_ipaddr`); the server binds 0.0.0.0
        for it, behind its token."""
        if box is None or not box.public_ip or port not in box.ports:
            return None
        return DirectAddress(box.public_ip, box.ports[port], "0.0.0.0")

    def ended_at(self, provider_id: str) -> float | None:
        """The end of the instance's last charge row (vast bills until the destroy)."""
        now = time.time()
        rows = [r for r in self.cli.charges(now - 30 * 86400, now + 60) if r.get("source") == f"instance-{provider_id}"]
        ends = [float(r["end"]) for r in rows if isinstance(r.get("end"), (int, float))]
        return max(ends) if ends else None

    def charges(self, start: float, end: float) -> dict[str, float]:
        return charges_by_instance(self.cli.charges(start, end))
