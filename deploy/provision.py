"""Provisioning as a list of named steps over one `Context`.

    rent -> wait_running -> connect -> check        (this issue)
         -> push -> autotune -> start -> ready      (later issues append to STEPS, or pass `steps=`)

Offers are tried in order (cheapest first), at most `max_offers`. A step that fails after `rent` destroys exactly what
this attempt rented (unless `keep_on_failure`), puts the host on the skip list and moves to the next offer when the
step says another box may help. If that destroy fails we stop and name the `deploy teardown <id>` to run. Every step
is recorded in the ledger before it runs.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import ledger as L
from deploy.errors import (
    CleanupFailedError,
    DeployError,
    NoOffersError,
    OfferUnavailableError,
    StepFailedError,
    UsageError,
)
from csm_common.gpus import Gpu
from deploy.ledger import Ledger, Rental
from deploy.providers import OfferQuery, Provider, RentRequest, host_for
from deploy.records import Box, Offer
from deploy.remote import Host, RemoteHost, wait_for_ssh
from deploy.settings import DeploySettings


@dataclass
class ProvisionOptions:
    provider: str = "vast"
    gpu: Gpu | None = None
    max_price: float | None = None
    min_reliability: float | None = None
    min_cuda: float | None = None
    disk_gb: float = 40.0
    image: str = ""
    max_offers: int = 3
    ready_timeout_s: float = 600.0
    ssh_timeout_s: float = 180.0
    keep_on_failure: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # later steps' options (model, autotune, ...) live here

    @classmethod
    def from_settings(cls, settings: DeploySettings, **overrides: Any) -> ProvisionOptions:
        base = cls(
            max_price=settings.max_price,
            min_reliability=settings.min_reliability,
            min_cuda=settings.min_cuda,
            disk_gb=settings.disk_gb,
            image=settings.image,
            max_offers=settings.max_offers,
            ready_timeout_s=settings.ready_timeout_s,
            ssh_timeout_s=settings.ssh_timeout_s,
        )
        for k, v in overrides.items():
            if v is not None:
                setattr(base, k, v)
        return base


@dataclass
class Context:
    """Everything a step may use. Steps read what earlier steps left and write what later ones need."""

    settings: DeploySettings
    options: ProvisionOptions
    provider: Provider
    ledger: Ledger
    attempt_id: str
    offer: Offer
    log: Callable[[str], None]
    rental: Rental | None = None  # the ledger row (re-read after each write via `refresh`)
    box: Box | None = None  # what the provider says about the box
    host: Host | None = None  # RemoteHost or LocalHost, once `connect` ran
    state: dict[str, Any] = field(default_factory=dict)  # scratch shared between steps (ports, paths, results)

    @property
    def rental_id(self) -> int:
        assert self.rental is not None, "no ledger row before the rent step"
        return self.rental.id

    def refresh(self) -> Rental:
        self.rental = self.ledger.get(self.rental_id)
        assert self.rental is not None
        return self.rental

    def event(self, kind: str, detail: str | None = None) -> None:
        self.ledger.event(self.rental.id if self.rental else None, kind, detail, attempt_id=self.attempt_id)


StepFn = Callable[[Context], None]


@dataclass(frozen=True)
class Step:
    name: str
    run: StepFn
    retry_next_offer: bool = True  # True: a failure here says "bad box", so another offer may succeed


# --- the steps this issue delivers ---------------------------------------------------------------------------------


def ensure_ssh_key(settings: DeploySettings) -> str:
    """The public half of our SSH key, made on first use under DEPLOY_HOME (an explicit DEPLOY_SSH_KEY must exist)."""
    key = settings.ssh_key_path
    if not key.exists():
        if settings.ssh_key:
            raise UsageError(f"SSH key {key} does not exist")
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "csm-deploy", "-f", str(key)],
            check=True,
            stdin=subprocess.DEVNULL,
        )
    pub = Path(str(key) + ".pub")
    if not pub.exists():
        raise UsageError(f"SSH public key {pub} is missing")
    return pub.read_text().strip()


def step_rent(ctx: Context) -> None:
    """Intent row first (with the label the rental will carry), then the create call, then the id."""
    s, o = ctx.settings, ctx.offer
    ctx.rental = ctx.ledger.record_intent(
        attempt_id=ctx.attempt_id,
        provider=ctx.provider.name,
        label_prefix=s.label_prefix,
        offer_id=o.id,
        host_id=o.host_id or None,
        gpu=ctx.options.gpu.alias if ctx.options.gpu else None,
        gpu_name=o.gpu_name,
        rate_usd_h=o.price_usd_h,
        meta={"image": ctx.options.image, "disk_gb": ctx.options.disk_gb},
    )
    label = ctx.rental.label or ""
    pub = ensure_ssh_key(s) if ctx.provider.name != "local" else None
    request = RentRequest(
        label=label,
        image=ctx.options.image,
        disk_gb=ctx.options.disk_gb,
        ssh_public_key=pub,
        ports=tuple(ctx.options.extra.get("expose_ports") or ()),  # the server's port, unless --tunnel
    )
    try:
        provider_id = ctx.provider.rent(o, request)
    except OfferUnavailableError as exc:
        ctx.ledger.close_rental(ctx.rental_id, L.NOT_CREATED, str(exc))
        raise
    except BaseException:
        _adopt_by_label(ctx, label)  # the create may have gone through before the error: find it by its label
        raise
    ctx.rental = ctx.ledger.record_rented(ctx.rental_id, provider_id)
    ctx.log(
        f"rented {ctx.provider.name} {provider_id} ({o.gpu_name}, {o.price_usd_h:.3f} USD/h) as ledger row {ctx.rental_id}"
    )


def _adopt_by_label(ctx: Context, label: str) -> None:
    try:
        owned = ctx.provider.list_owned(ctx.settings.label_prefix)
    except Exception:  # cannot tell: the intent row stays open for `status` / `teardown --all`
        return
    match = [b for b in owned if b.label == label]
    if match:
        ctx.rental = ctx.ledger.record_rented(ctx.rental_id, match[0].id)
    else:
        ctx.ledger.close_rental(ctx.rental_id, L.NOT_CREATED, "create failed and nothing carries our label")
        ctx.rental = ctx.refresh()


def step_wait_running(ctx: Context) -> None:
    deadline = time.monotonic() + ctx.options.ready_timeout_s
    box = ctx.provider.wait_ready(
        str(ctx.rental.provider_id), deadline=deadline, poll_s=ctx.settings.poll_interval_s, log=ctx.log
    )
    ctx.box = box
    ctx.ledger.record_connection(
        ctx.rental_id, ssh_host=box.ssh_host, ssh_port=box.ssh_port, ssh_user=box.ssh_user or ctx.settings.ssh_user
    )
    ctx.refresh()


def step_connect(ctx: Context) -> None:
    rental = ctx.refresh()
    if rental.provider == "local":
        ctx.host = host_for(rental, ctx.settings, ctx.ledger)
        return
    deadline = time.monotonic() + ctx.options.ssh_timeout_s

    def make() -> RemoteHost:
        host = host_for(ctx.refresh(), ctx.settings, ctx.ledger, connect_timeout=min(10.0, ctx.options.ssh_timeout_s))
        assert isinstance(host, RemoteHost)
        return host

    ctx.host = wait_for_ssh(
        make, deadline=deadline, what=f"rental {rental.id}", poll_s=ctx.settings.poll_interval_s, log=ctx.log
    )


def step_check(ctx: Context) -> None:
    assert ctx.host is not None
    res = ctx.host.run(ctx.settings.check_command, timeout=ctx.settings.check_timeout_s, stream=False)
    first = (res.stdout.strip().splitlines() or [""])[0]
    ctx.state["check"] = res.stdout
    ctx.event("check", first)
    ctx.log(f"check: {first}")


STEPS: list[Step] = [
    Step("rent", step_rent),
    Step("wait_running", step_wait_running),
    Step("connect", step_connect),
    Step("check", step_check),
]


def add_step(step: Step, *, after: str | None = None, steps: list[Step] | None = None) -> list[Step]:
    """Insert a step after a named one (default: at the end). Returns the list it changed."""
    target = STEPS if steps is None else steps
    if any(s.name == step.name for s in target):
        raise ValueError(f"a step named {step.name!r} exists already")
    index = len(target) if after is None else [s.name for s in target].index(after) + 1
    target.insert(index, step)
    return target


# --- the driver ----------------------------------------------------------------------------------------------------


def search_offers(provider: Provider, options: ProvisionOptions, *, limit: int = 20) -> list[Offer]:
    query = OfferQuery(
        gpu=options.gpu,
        max_price=options.max_price,
        min_reliability=options.min_reliability,
        min_cuda=options.min_cuda,
        disk_gb=options.disk_gb,
        limit=limit,
    )
    return provider.search(query)


def provision(
    settings: DeploySettings,
    options: ProvisionOptions,
    provider: Provider,
    ledger: Ledger,
    *,
    log: Callable[[str], None] = lambda _m: None,
    steps: list[Step] | None = None,
) -> Context:
    """Run the steps on the cheapest offers in turn; return the context of the attempt that passed them all."""
    steps = list(STEPS if steps is None else steps)
    attempt_id = ledger.new_attempt_id()
    offers = search_offers(provider, options, limit=max(options.max_offers * 4, 10))
    if not offers:
        raise NoOffersError(f"no {provider.name} offer matches ({_describe(options)}); try `deploy offers`")
    ledger.event(None, "attempt", f"{provider.name}: {len(offers)} offers", attempt_id=attempt_id)
    skip: set[str] = set()
    failures: list[str] = []
    tried = 0
    for offer in offers:
        if tried >= options.max_offers:
            break
        if offer.host_id and offer.host_id in skip:
            continue
        tried += 1
        ctx = Context(settings, options, provider, ledger, attempt_id, offer, log)
        log(f"offer {tried}/{options.max_offers}: {offer.id} {offer.gpu_name} at {offer.price_usd_h:.3f} USD/h")
        step: Step | None = None
        try:
            for i, step in enumerate(steps, 1):
                log(f"[{i}/{len(steps)}] {step.name}")
                ctx.event(f"step:{step.name}")
                started = time.monotonic()
                step.run(ctx)
                elapsed = time.monotonic() - started
                ctx.state.setdefault("timings", {})[step.name] = round(elapsed, 2)
                ctx.event(f"done:{step.name}", f"{elapsed:.2f} s")
                log(f"[{i}/{len(steps)}] {step.name} done in {elapsed:.1f} s")
            ledger.set_status(ctx.rental_id, L.READY)
            ctx.refresh()
            return ctx
        except OfferUnavailableError as exc:
            failures.append(f"offer {offer.id}: taken")
            log(f"offer {offer.id} was taken: {exc}; trying the next one")
            continue
        except (DeployError, OSError, KeyboardInterrupt) as exc:
            name = step.name if step else "?"
            reason = f"{name}: {exc}" if not isinstance(exc, KeyboardInterrupt) else f"{name}: interrupted"
            failures.append(f"offer {offer.id}: {reason}")
            if offer.host_id:
                skip.add(offer.host_id)
            _after_failure(ctx, reason, log)
            if isinstance(exc, KeyboardInterrupt):
                raise
            if not (step and step.retry_next_offer):
                raise StepFailedError(name, str(exc), retry_next_offer=False) from exc
            log(f"offer {offer.id} failed at {name}; trying the next one")
        finally:
            if ctx.host is not None and ctx.rental is not None and ctx.rental.status != L.READY:
                ctx.host.close()
    raise NoOffersError(f"no offer could be provisioned after {tried} tries: " + "; ".join(failures))


def _after_failure(ctx: Context, reason: str, log: Callable[[str], None]) -> None:
    """Destroy what this attempt rented, unless asked to keep it. A failed destroy stops everything."""
    if ctx.rental is None:
        return
    rental = ctx.refresh()
    if not rental.is_open:
        return
    if rental.provider_id is None:
        ctx.ledger.set_status(rental.id, L.INTENT, f"failed before the provider gave an id: {reason}")
        log(
            f"rental {rental.id} may exist without an id; `deploy status` will show it, `deploy teardown --all` ends it"
        )
        return
    ctx.ledger.set_status(rental.id, L.FAILED, reason)
    if ctx.host is not None:
        ctx.host.close()
        ctx.host = None
    if ctx.options.keep_on_failure:
        log(
            f"kept rental {rental.id} ({rental.provider} {rental.provider_id}) for inspection: `deploy teardown {rental.id}`"
        )
        return
    log(f"destroying rental {rental.id} ({rental.provider} {rental.provider_id})")
    try:
        destroy_rental(ctx.provider, ctx.ledger, rental, reason=f"provision failed at {reason}", poll_s=1.0)
    except Exception as exc:
        raise CleanupFailedError(
            f"could not destroy {rental.provider} instance {rental.provider_id} after a failed provision ({exc}); "
            f"it may still bill: run `deploy teardown {rental.id}`"
        ) from exc


def destroy_rental(
    provider: Provider, ledger: Ledger, rental: Rental, *, reason: str, timeout_s: float = 120.0, poll_s: float = 2.0
) -> str:
    """Destroy one rental and close its ledger row; returns the final status. Used by provision and teardown."""
    if rental.provider_id is None:
        ledger.close_rental(rental.id, L.NOT_CREATED, reason)
        return L.NOT_CREATED
    ledger.event(rental.id, "destroying", reason)
    try:
        provider.destroy(rental.provider_id, deadline=time.monotonic() + timeout_s, poll_s=poll_s)
    except NotImplementedError as exc:
        ledger.close_rental(rental.id, L.RELEASED, f"{reason} ({exc})")
        return L.RELEASED
    ledger.close_rental(rental.id, L.DESTROYED, reason)
    return L.DESTROYED


def _describe(options: ProvisionOptions) -> str:
    parts = [f"gpu={options.gpu.alias}" if options.gpu else "any gpu"]
    if options.max_price is not None:
        parts.append(f"max price {options.max_price} USD/h")
    if options.min_reliability is not None:
        parts.append(f"reliability >= {options.min_reliability}")
    if options.min_cuda is not None:
        parts.append(f"CUDA >= {options.min_cuda}")
    parts.append(f"disk {options.disk_gb:g} GB")
    return ", ".join(parts)
