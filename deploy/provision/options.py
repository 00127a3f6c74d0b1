"""What a provision is asked to do, typed: `ProvisionOptions` (which box) holding `RuntimeOptions` (what runs on it).

The CLI builds both once (`deploy provision`), a fleet stores them as JSON in its spec to make more replicas alike;
steps only read them. `RuntimeOptions.resolve` is the one place that turns the operator's `auto`s into concrete
choices for a provider (runtime mode, server port).
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from csm_common.gpus import Gpu, resolve, version_tuple
from deploy.errors import UsageError
from deploy.providers.records import Offer, SshHost
from deploy.settings import DEFAULT_IMAGE

if TYPE_CHECKING:
    from deploy.providers import Provider
    from deploy.settings import DeploySettings

MODES = ("auto", "bootstrap", "image", "current")
STOCK_IMAGE_PREFIX = "pytorch/pytorch"  # ships torch in the system site-packages: the venv reuses it
DEFAULT_MODEL = "sesame/csm-1b"
DEFAULT_IDLE_S = 3600.0  # a vast box nobody used for an hour destroys itself


@dataclass(frozen=True)
class Watchdog:
    """When the box destroys itself (csm_runtime/watchdog.py), with the laptop out of the picture."""

    idle_s: float | None = DEFAULT_IDLE_S  # no request (or a dead server) this long
    max_hours: float | None = None
    max_spend_usd: float | None = None

    def args(self, rate_usd_h: float) -> list[str]:
        """`csm-runtime watchdog` options for these limits."""
        out = []
        if self.idle_s is not None:
            out += ["--idle-destroy-after", f"{self.idle_s:g}"]
        if self.max_hours is not None:
            out += ["--max-hours", f"{self.max_hours:g}"]
        if self.max_spend_usd is not None:
            out += ["--max-spend", f"{self.max_spend_usd:g}", "--rate", f"{rate_usd_h:g}"]
        return out

    def describe(self) -> str:
        parts = [f"idle {self.idle_s / 60:g} min" if self.idle_s else ""]
        parts += [
            f"max {self.max_hours:g} h" if self.max_hours else "",
            f"max ${self.max_spend_usd:g}" if self.max_spend_usd else "",
        ]
        return ", ".join(p for p in parts if p) or "no limit"


@dataclass(frozen=True)
class RuntimeOptions:
    """What the runtime steps (push, install, autotune, start, ready) need."""

    model: str = DEFAULT_MODEL
    mode: str = "bootstrap"  # resolved: bootstrap | image | current
    port: int | None = None  # the server's port on the box; None: the provider's (8000, a free one on this machine)
    bind: str = "127.0.0.1"  # loopback unless the provider mapped the port to a public one (then 0.0.0.0)
    tunnel: bool = False  # --tunnel: stay on loopback and reach the server through SSH even if a port is mapped
    box_python: str = "auto"
    box_site_packages: str | None = None
    system_site_packages: bool = False
    autotune: bool | None = None  # None: only when no profile exists for the box's device; True: always; False: never
    autotune_quick: bool = True
    autotune_args: tuple[str, ...] = ()
    profiles_dir: str | None = None  # None: the project's profiles/ (deploy/provision/layout.py)
    local_hf_token_file: str | None = None  # the Hub token's file here; None: HF_TOKEN, then `hf auth login`'s file
    install_timeout_s: float = 1800.0
    autotune_timeout_s: float = 3600.0
    runtime_timeout_s: float = 900.0  # start -> /ready (the first start on a real box downloads the checkpoint)
    watchdog: Watchdog | None = None  # the box's dead man's switch, where the provider lets a box end itself

    @classmethod
    def resolve(
        cls,
        provider: Provider,
        *,
        image: str,
        model: str = DEFAULT_MODEL,
        mode: str = "auto",
        port: int | None = None,
        autotune_quick: bool | None = None,
        autotune_args: str | None = None,
        autotune: bool | None = None,
        tunnel: bool = False,
        box_python: str = "auto",
        box_site_packages: str | None = None,
        runtime_timeout_s: float | None = None,
        local_hf_token_file: str | None = None,
        watchdog: Watchdog | None = None,
    ) -> RuntimeOptions:
        """The operator's choices for this provider: an `auto` mode becomes the provider's own. The port stays None
        when not given: each provision takes the provider's (`for_provider`), so local replicas get one each."""
        if port is not None and not 0 < int(port) < 65536:
            raise UsageError(f"--server-port must be between 1 and 65535, not {port}")
        return cls(
            model=model or DEFAULT_MODEL,
            mode=resolve_mode(mode, provider=provider, image=image),
            port=None if port is None else int(port),
            system_site_packages=image.startswith(STOCK_IMAGE_PREFIX),
            autotune_quick=model.endswith("-random") if autotune_quick is None else bool(autotune_quick),
            autotune_args=tuple(shlex.split(autotune_args or "")),
            autotune=autotune,
            tunnel=tunnel,
            box_python=box_python,
            box_site_packages=box_site_packages,
            runtime_timeout_s=cls.runtime_timeout_s if runtime_timeout_s is None else runtime_timeout_s,
            local_hf_token_file=local_hf_token_file,
            watchdog=watchdog,
        )

    def for_provider(self, provider: Provider) -> RuntimeOptions:
        """With the port filled in: the one given, else the provider's default for a new box."""
        return self if self.port is not None else dataclasses.replace(self, port=provider.default_server_port())

    @property
    def server_port(self) -> int:
        assert self.port is not None, "RuntimeOptions.for_provider fills the port before any step uses it"
        return self.port

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuntimeOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "autotune_args" in values:
            values["autotune_args"] = tuple(values["autotune_args"])
        if values.get("watchdog"):
            values["watchdog"] = Watchdog(**values["watchdog"])
        return cls(**values)


def resolve_mode(mode: str, *, provider: Provider, image: str) -> str:
    """auto: this interpreter's own environment where the box is this machine (no venv, no wheel: keeps `make demo`
    fast), the image's runtime where the image carries one, else the wheel pushed and installed."""
    if mode not in MODES:
        raise UsageError(f"unknown runtime mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "auto":
        return "current" if provider.runs_here else "image" if is_runtime_image(image) else "bootstrap"
    if mode == "current" and not provider.runs_here:
        raise UsageError("--runtime-mode current only makes sense with --provider local")
    return mode


def is_runtime_image(image: str) -> bool:
    """`ghcr.io/me/csm-runtime:1.2` -> True: the repository name (last path part, before the tag) is csm-runtime."""
    name = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    return name == "csm-runtime"


@dataclass(frozen=True)
class ProvisionOptions:
    """Which box to rent, how long to wait for it, and (unless box only) the runtime to put on it."""

    provider: str = "vast"
    gpu: Gpu | None = None
    max_price: float | None = None
    min_reliability: float | None = None
    min_cuda: float | None = None
    disk_gb: float = 40.0
    image: str = ""
    max_offers: int = 3
    ready_timeout_s: float = 1800.0
    ssh_timeout_s: float = 180.0
    keep_on_failure: bool = False
    runtime: RuntimeOptions | None = None  # None: box only (rent, wait_running, connect, check)
    ssh: SshHost = field(default_factory=SshHost)  # the ssh provider's box
    interruptible: bool = False  # rent at a bid (vast's interruptible instance): cheaper, stopped when outbid
    bid_usd_h: float | None = None  # the GPU's bid in USD/h; None: the offer's min_bid raised by bid_over_min_pct
    bid_over_min_pct: float | None = None  # bid this many percent over the offer's min_bid (None with no bid: 0)

    def __post_init__(self) -> None:
        check_bid(self.interruptible, self.bid_usd_h, self.bid_over_min_pct)

    @property
    def rent_image(self) -> str:
        """The image to rent with: a GPU family that needs a newer CUDA than the default image starts from its own
        (csm_common/gpus.py), unless another image was chosen."""
        if self.gpu is not None and self.gpu.image and self.image == DEFAULT_IMAGE:
            return self.gpu.image
        return self.image

    @classmethod
    def from_settings(
        cls,
        settings: DeploySettings,
        *,
        provider: str = "vast",
        gpu: Gpu | None = None,
        max_price: float | None = None,
        min_reliability: float | None = None,
        min_cuda: float | None = None,
        disk_gb: float | None = None,
        image: str | None = None,
        max_offers: int | None = None,
        ready_timeout_s: float | None = None,
        ssh_timeout_s: float | None = None,
        keep_on_failure: bool = False,
        runtime: RuntimeOptions | None = None,
        ssh: SshHost | None = None,
        interruptible: bool = False,
        bid_usd_h: float | None = None,
        bid_over_min_pct: float | None = None,
    ) -> ProvisionOptions:
        """The settings' defaults, each replaced by the option given (None: not given)."""

        def given(value: Any, default: Any) -> Any:
            return default if value is None else value

        return cls(
            provider=provider,
            gpu=gpu,
            max_price=given(max_price, settings.max_price),
            min_reliability=given(min_reliability, settings.min_reliability),
            min_cuda=given(min_cuda, settings.min_cuda),
            disk_gb=given(disk_gb, settings.disk_gb),
            image=given(image, settings.image),
            max_offers=given(max_offers, settings.max_offers),
            ready_timeout_s=given(ready_timeout_s, settings.ready_timeout_s),
            ssh_timeout_s=given(ssh_timeout_s, settings.ssh_timeout_s),
            keep_on_failure=keep_on_failure,
            runtime=runtime,
            ssh=ssh or SshHost(),
            interruptible=interruptible,
            bid_usd_h=bid_usd_h,
            bid_over_min_pct=bid_over_min_pct,
        )

    def bid_for(self, offer: Offer) -> float | None:
        """The bid to rent this offer at: None when on-demand; the --bid given; else the offer's min_bid raised by
        --bid-over-min (0 % when neither was given). An explicit bid under the offer's min_bid is still returned:
        the provider refuses it (the search leaves such offers out)."""
        if not self.interruptible:
            return None
        if self.bid_usd_h is not None:
            return self.bid_usd_h
        if offer.min_bid_usd_h is None:
            raise UsageError(f"offer {offer.id} takes no bid: it has no minimum bid to raise")
        return round(offer.min_bid_usd_h * (1 + (self.bid_over_min_pct or 0.0) / 100), 6)

    def replace(self, **changes: Any) -> ProvisionOptions:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe (a fleet's spec stores it): the GPU by alias, the runtime as a dict."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["gpu"] = self.gpu.alias if self.gpu else None
        data["runtime"] = self.runtime.as_dict() if self.runtime else None
        data["ssh"] = dataclasses.asdict(self.ssh)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProvisionOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["gpu"] = resolve(values["gpu"]) if values.get("gpu") else None
        values["runtime"] = RuntimeOptions.from_dict(values["runtime"]) if values.get("runtime") else None
        values["ssh"] = SshHost(**(values.get("ssh") or {}))
        return cls(**values)


def check_bid(interruptible: bool, bid_usd_h: float | None, bid_over_min_pct: float | None) -> None:
    """A bid is one price or one margin over the offer's minimum, and only for an interruptible rental."""
    if not interruptible and (bid_usd_h is not None or bid_over_min_pct is not None):
        raise UsageError("--bid and --bid-over-min only apply with --interruptible")
    if bid_usd_h is not None and bid_over_min_pct is not None:
        raise UsageError("give --bid or --bid-over-min, not both")
    if bid_usd_h is not None and not bid_usd_h > 0:
        raise UsageError(f"--bid must be a price above 0 USD/h, not {bid_usd_h:g}")
    if bid_over_min_pct is not None and not 0 <= bid_over_min_pct <= 1000:
        raise UsageError(f"--bid-over-min must be a percentage between 0 and 1000, not {bid_over_min_pct:g}")


def check_torch(gpu: Gpu, pinned: str | None) -> None:
    """Refuse a GPU whose kernels the runtime's pinned torch lacks (`pinned`: layout.runtime_torch(), read by the
    command that builds the options), before anything is rented."""
    if gpu.min_torch and pinned and version_tuple(pinned) < version_tuple(gpu.min_torch):
        raise UsageError(
            f"the {gpu.vast_name} needs PyTorch >= {gpu.min_torch} built for CUDA "
            f"{gpu.min_cuda:g} (its kernels are missing from older wheels); the runtime is pinned to torch "
            f"{pinned}: choose another GPU, or --no-runtime to rent the box alone"
        )
