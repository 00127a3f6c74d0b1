"""Records every provider returns: an `Offer` to rent and a `Box` that was rented. Plain dataclasses, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class State(str, Enum):
    """Three states are enough to drive provisioning; the provider's own word is kept in `Box.raw_status`."""

    PENDING = "pending"  # created / loading / scheduling: keep waiting
    RUNNING = "running"
    STOPPED = "stopped"  # exited / stopped: will not come up by itself (and may still bill disk)
    FAILED = "failed"  # offline / frozen / error: give up at once
    GONE = "gone"  # the provider no longer knows it


TERMINAL = frozenset({State.STOPPED, State.FAILED, State.GONE})


@dataclass(frozen=True)
class SshHost:
    """A box you already have, for the ssh provider (`--host/--port/--user`); the other providers take none."""

    host: str | None = None
    port: int | None = None
    user: str | None = None


@dataclass(frozen=True)
class Offer:
    provider: str
    id: str
    gpu_name: str
    num_gpus: int = 1
    price_usd_h: float = 0.0
    reliability: float | None = None
    cuda: float | None = None
    disk_gb: float | None = None
    gpu_ram_gb: float | None = None
    location: str = ""
    host_id: str = ""  # what goes on the skip list when a box from this host fails
    storage_usd_gb_month: float | None = None  # vast bills the disk apart from the GPU, from create to destroy
    min_bid_usd_h: float | None = None  # a bid offer's lowest bid for the GPU (vast `min_bid`); None: on-demand only

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Box:
    provider: str
    id: str
    state: State
    raw_status: str = ""
    label: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_user: str = "root"
    price_usd_h: float | None = None
    gpu_name: str = ""
    started_at: float | None = None  # unix time the provider started billing, when it says
    detail: str = ""  # the provider's status message, for errors
    public_ip: str | None = None  # the address a mapped port answers on (vast: public_ipaddr)
    ports: dict[int, int] = field(default_factory=dict, compare=False)  # port in the box -> port on public_ip
    direct_ssh: bool = False  # ssh_host/ssh_port are the box's own address (vast: `22/tcp` mapped), not a proxy
    proxy_host: str | None = None  # a proxy in front of the box's sshd (vast: ssh_host:ssh_port), another way in
    proxy_port: int | None = None
    interruptible: bool = False  # rented at a bid (vast: is_bid): the provider stops it when outbid
    preempted: bool = False  # stopped by the provider because a higher bid took the machine (state is STOPPED)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["state"] = self.state.value
        return d


@dataclass(frozen=True)
class Charge:
    """What the provider billed one instance (vast's charge rows for `instance-<id>`, summed): the total, and where it
    itemises, the parts (`gpu`, `disk`, `bandwidth`). `start`/`end`: the span the rows cover (unix time)."""

    amount: float
    start: float | None = None
    end: float | None = None
    items: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"amount": self.amount, "start": self.start, "end": self.end, "items": dict(self.items)}
