"""What provision steps share: the typed `Context` of one attempt (steps read what earlier steps left and write what
later ones need) and the `Step` record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deploy.cancel import CancelToken
from deploy.ledger import Ledger, Rental
from deploy.providers import DirectAddress, Provider
from deploy.providers.records import Box, Offer
from deploy.provision.layout import BoxLayout
from deploy.provision.options import ProvisionOptions, RuntimeOptions
from deploy.remote.host import Host
from deploy.settings import DeploySettings

Log = Callable[[str], None]


@dataclass
class Context:
    """Everything a step may use. Steps read what earlier steps left and write what later ones need."""

    settings: DeploySettings
    options: ProvisionOptions
    provider: Provider
    ledger: Ledger
    attempt_id: str
    offer: Offer
    log: Log
    rental: Rental | None = None  # the ledger row (re-read after each write via `refresh`)
    box: Box | None = None  # what the provider says about the box (wait_running)
    host: Host | None = None  # RemoteHost or LocalHost (connect)
    check_output: str = ""  # the check command's output (check)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    runtime: RuntimeOptions | None = None  # options.runtime, with what start decided (bind)
    layout: BoxLayout | None = None  # where the runtime lives on the box (push: absolute from then on)
    wheel: str | None = None  # the pushed wheel's file name (push, bootstrap mode)
    device: dict[str, Any] | None = None  # the box's device facts (autotune)
    profile: dict[str, Any] | None = None  # the profile pushed or measured (autotune)
    direct: DirectAddress | None = None  # where the server answers without a tunnel (start)
    server_pid: int | None = None  # the detached server (start)
    box_hf_token_file: str | None = None  # the Hub token's file on the box (push); None: none was found here
    cancel: CancelToken | None = None  # the command's one cancel token (signals, a fleet): a wait that sees it stops

    @property
    def rental_id(self) -> int:
        assert self.rental is not None, "no ledger row before the rent step"
        return self.rental.id

    def refresh(self) -> Rental:
        self.rental = self.ledger.require(self.rental_id)
        return self.rental

    def event(self, kind: str, detail: str | None = None) -> None:
        self.ledger.event(self.rental.id if self.rental else None, kind, detail, attempt_id=self.attempt_id)


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Context], None]
    retry_next_offer: bool = True  # True: a failure here says "bad box", so another offer may succeed
