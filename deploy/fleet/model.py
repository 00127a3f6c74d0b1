"""The fleet's types and decisions: the spec that makes one more replica like the others, the typed results of
scale and heal, and the pure rules for which replica goes (scale) and when one is replaced (heal).

The rows themselves (fleets, replicas) are in deploy/ledger/fleets.py; orchestration is in replicas.py (provision),
scale.py and heal.py; the gateway in deploy/gateway/.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from csm_common.gpus import resolve
from deploy.errors import UsageError
from deploy.ledger.fleets import Replica
from deploy.provision.options import ProvisionOptions
from deploy.remote.tls import client_context, pinned
from deploy.secrets.tokens import read_token_file


@dataclass(frozen=True)
class FleetSpec:
    """How to make one more replica exactly like the fleet's others: the provider, the GPU types to try in order
    (`4090,3090`: the next type when the first has no offer left), and the provision options (GPU left out).

    With `options.interruptible`, the fleet mixes kinds: at least `on_demand_min` replicas on demand (they survive a
    higher bid), the rest interruptible (rented at a bid, cheaper, stopped when outbid)."""

    provider: str
    gpus: tuple[str, ...]
    options: ProvisionOptions
    on_demand_min: int = 0

    def __post_init__(self) -> None:
        if self.on_demand_min < 0:
            raise UsageError(f"--on-demand-min must be 0 or more, not {self.on_demand_min}")
        if self.on_demand_min and not self.options.interruptible:
            raise UsageError(
                "--on-demand-min only applies with --interruptible (without it every replica is on demand)"
            )

    def options_for(self, gpu: str | None, *, interruptible: bool | None = None) -> ProvisionOptions:
        """One replica's options; `interruptible=False` makes it on demand even in an interruptible fleet."""
        options = self.options.replace(gpu=resolve(gpu) if gpu else None)
        if interruptible is False and options.interruptible:
            options = options.replace(interruptible=False, bid_usd_h=None, bid_over_min_pct=None)
        return options

    def kinds(self, count: int, on_demand_live: int) -> list[bool]:
        """Whether each of `count` new replicas is interruptible: on demand until the fleet holds `on_demand_min`
        on-demand replicas, interruptible after (all on demand in a fleet that is not interruptible)."""
        if not self.options.interruptible:
            return [False] * count
        on_demand = max(0, min(count, self.on_demand_min - on_demand_live))
        return [False] * on_demand + [True] * (count - on_demand)

    def with_mix(
        self,
        *,
        interruptible: bool | None = None,
        bid_usd_h: float | None = None,
        bid_over_min_pct: float | None = None,
        on_demand_min: int | None = None,
    ) -> FleetSpec:
        """The spec with the kinds changed (`deploy scale --interruptible --on-demand-min K`, or `--on-demand`); what
        is not given is kept (a new bid replaces both bid settings)."""
        o = self.options
        bid = o.interruptible if interruptible is None else interruptible
        if not bid:
            if bid_usd_h is not None or bid_over_min_pct is not None:
                raise UsageError("--bid and --bid-over-min only apply with --interruptible")
            options = o.replace(interruptible=False, bid_usd_h=None, bid_over_min_pct=None)
        elif bid_usd_h is not None or bid_over_min_pct is not None:
            options = o.replace(interruptible=True, bid_usd_h=bid_usd_h, bid_over_min_pct=bid_over_min_pct)
        else:
            options = o.replace(interruptible=True)
        keep = self.on_demand_min if bid else 0
        return dataclasses.replace(
            self, options=options, on_demand_min=keep if on_demand_min is None else on_demand_min
        )

    def describe_mix(self) -> str:
        o = self.options
        if not o.interruptible:
            return "every replica on demand"
        price = (
            f"bid {o.bid_usd_h:g} USD/h" if o.bid_usd_h is not None else f"{o.bid_over_min_pct or 0:g}% over min bid"
        )
        return f"at least {self.on_demand_min} on demand, the rest interruptible ({price})"

    def as_dict(self) -> dict[str, Any]:
        d = {"provider": self.provider, "gpus": list(self.gpus), "options": self.options.as_dict()}
        if self.on_demand_min:
            d["on_demand_min"] = self.on_demand_min
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FleetSpec:
        options = ProvisionOptions.from_dict(data["options"])
        return cls(data["provider"], tuple(data.get("gpus") or ()), options, int(data.get("on_demand_min") or 0))


@dataclass
class Added:
    """Replicas a parallel provision added (their rental ids) and why the others failed."""

    rental_ids: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [f"r{i}" for i in self.rental_ids]


@dataclass(frozen=True)
class ScaleResult:
    fleet: str
    target: int
    active: list[str]
    removed: list[str]
    added: list[str]
    failures: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class HealResult:
    fleet: str
    checked: dict[str, str]  # replica -> verdict ("ready", or why it was replaced / is being watched)
    replaced: list[str]
    added: list[str]
    failures: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def replica_cert(replica: Replica) -> str | None:
    """The pinned certificate of an https replica (the only one its clients accept), or None for plain http."""
    try:
        cert = pinned(replica.rental.server)
    except UsageError as exc:
        raise UsageError(f"replica {replica.name}: {exc}") from None
    return str(cert) if cert is not None else None


def replica_verify(replica: Replica) -> ssl.SSLContext | bool:
    """What an httpx client passes as `verify=` for this replica."""
    cert = replica_cert(replica)
    return client_context(cert) if cert else True


def replica_token(replica: Replica) -> str:
    """The replica's own bearer token, read from its 0600 file under DEPLOY_HOME."""
    path = replica.rental.server.token_file
    if not path:
        raise UsageError(f"replica {replica.name} (rental {replica.rental.id}) has no token file recorded")
    try:
        token = read_token_file(path)
    except UsageError as exc:
        raise UsageError(f"replica {replica.name}: {exc}") from None
    assert token is not None
    return token


# --- decisions (pure) ----------------------------------------------------------------------------------------------


def choose_for_removal(replicas: Sequence[Replica], count: int, unhealthy: Iterable[str] = ()) -> list[Replica]:
    """Which replicas `scale` removes: unhealthy ones first, then the newest (the oldest have proven themselves)."""
    if count <= 0:
        return []
    bad = set(unhealthy)
    ranked = sorted(replicas, key=lambda r: (r.name not in bad, -r.added_at, -r.id))
    return ranked[:count]


def due_for_replacement(
    replica: Replica, *, box_alive: bool, ready: bool, now: float, after_s: float
) -> tuple[bool, str]:
    """Heal's rule: the instance died -> now; /ready has failed for `after_s` seconds (since `failing_since`) -> now;
    otherwise not (yet)."""
    if not box_alive:
        return True, "instance is gone or stopped"
    if ready:
        return False, "ready"
    since = replica.failing_since if replica.failing_since is not None else now
    if now - since >= after_s:
        return True, f"/ready failing for {now - since:.0f} s (limit {after_s:g} s)"
    return False, f"/ready failing for {now - since:.0f} s of {after_s:g} s"
