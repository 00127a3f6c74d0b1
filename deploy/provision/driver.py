"""The provision driver: named steps over one typed `Context`, on the cheapest offers in turn.

    rent -> wait_running -> connect -> check                 box_steps.py      (every provision)
         -> push -> install -> autotune -> start -> ready    runtime_steps.py  (unless box only)

Offers are tried in order (cheapest first), at most `max_offers`. A step that fails after `rent` destroys exactly what
this attempt rented (unless `keep_on_failure`), puts the host on the skip list and moves to the next offer when the
step says another box may help. If that destroy fails we stop and name the `deploy teardown <id>` to run. Every step
is recorded in the ledger before it runs.

Cancelling: one `CancelToken` (deploy/cancel.py; set by SIGINT/SIGTERM/SIGHUP, or by a fleet's main thread) is checked
before each step and by the waits inside them; in the main thread a step is also broken out of by the first signal.
A cancelled attempt destroys what it rented (by id, tried again on failure) and ends with `Interrupted`, whose text
says what is left billing; a rollback is not cancelled by the token.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

from deploy import ledger as L
from deploy.cancel import Abandon, CancelToken, Interrupt, Interrupted, current
from deploy.errors import (
    CleanupFailedError,
    DeployError,
    NoOffersError,
    OfferUnavailableError,
    ProvisionCancelled,
    RequestRefusedError,
    StepFailedError,
)
from deploy.ledger import Ledger
from deploy.providers import OfferQuery, Provider
from deploy.providers.records import Offer
from deploy.provision.box_steps import BOX_STEPS
from deploy.provision.context import Context, Log, Step
from deploy.provision.options import ProvisionOptions
from deploy.provision.release import end_rental
from deploy.provision.runtime_steps import RUNTIME_STEPS
from deploy.settings import DeploySettings

__all__ = ["Context", "Step", "run_provision", "search_offers", "steps_for"]


def steps_for(options: ProvisionOptions) -> list[Step]:
    """The box steps, then the runtime steps unless the options say box only."""
    return [*BOX_STEPS, *(RUNTIME_STEPS if options.runtime is not None else ())]


def search_offers(provider: Provider, options: ProvisionOptions, *, limit: int = 20) -> list[Offer]:
    query = OfferQuery(
        gpu=options.gpu,
        max_price=options.max_price,
        min_reliability=options.min_reliability,
        min_cuda=options.min_cuda,
        disk_gb=options.disk_gb,
        limit=limit,
        interruptible=options.interruptible,
    )
    return provider.search(query)


def run_provision(
    settings: DeploySettings,
    options: ProvisionOptions,
    provider: Provider,
    ledger: Ledger,
    *,
    log: Log = lambda _m: None,
    steps: Sequence[Step] | None = None,
    cancel: CancelToken | None = None,
) -> Context:
    """Run the steps on the cheapest offers in turn; return the context of the attempt that passed them all.
    `cancel`: the token to obey (default: the one the command's signal handlers set)."""
    steps = list(steps_for(options) if steps is None else steps)
    cancel = cancel or current() or CancelToken()
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
        if cancel.is_set():
            raise Interrupted(cancel.signum, "nothing left billing")
        tried += 1
        runtime = options.runtime.for_provider(provider) if options.runtime else None
        ctx = Context(settings, options, provider, ledger, attempt_id, offer, log, runtime=runtime, cancel=cancel)
        log(f"offer {tried}/{options.max_offers}: {offer.id} {offer.gpu_name} at {offer.price_usd_h:.3f} USD/h")
        step: Step | None = None
        try:
            for i, step in enumerate(steps, 1):
                cancel.check(f"cancelled before {step.name}")
                with cancel.interruptible():
                    _run_step(ctx, step, f"[{i}/{len(steps)}]")
            cancel.check("cancelled before the box was marked ready")
            ledger.set_status(ctx.rental_id, L.READY)
            ctx.refresh()
            return ctx
        except OfferUnavailableError as exc:
            failures.append(f"offer {offer.id}: taken")
            log(f"offer {offer.id} was taken: {exc}; trying the next one")
            continue
        except Abandon:  # the last signal: no rollback, only what is left
            raise Interrupted(cancel.signum, f"abandoned: {_left(ctx)}") from None
        except (DeployError, OSError, Interrupt) as exc:
            name = step.name if step else "?"
            stopped = isinstance(exc, (Interrupt, ProvisionCancelled)) or cancel.is_set()
            reason = f"{name}: interrupted" if stopped else f"{name}: {exc}"
            failures.append(f"offer {offer.id}: {reason}")
            if offer.host_id:
                skip.add(offer.host_id)
            try:
                outcome = _after_failure(ctx, reason, _quiet(log), cancel)
            except CleanupFailedError as cleanup:
                if not cancel.is_set():
                    raise
                outcome = str(cleanup)
            if stopped or cancel.is_set():
                raise Interrupted(cancel.signum, outcome) from None
            if not (step and step.retry_next_offer) or isinstance(exc, RequestRefusedError):
                raise StepFailedError(name, str(exc), retry_next_offer=False) from exc
            log(f"offer {offer.id} failed at {name}; trying the next one")
        finally:
            if ctx.host is not None and ctx.rental is not None and ctx.rental.status != L.READY:
                ctx.host.close()
    raise NoOffersError(f"no offer could be provisioned after {tried} tries: " + "; ".join(failures))


def _run_step(ctx: Context, step: Step, counter: str) -> None:
    ctx.log(f"{counter} {step.name}")
    ctx.event(f"step:{step.name}")
    started = time.monotonic()
    step.run(ctx)
    elapsed = time.monotonic() - started
    ctx.timings[step.name] = round(elapsed, 2)
    ctx.event(f"done:{step.name}", f"{elapsed:.2f} s")
    ctx.log(f"{counter} {step.name} done in {elapsed:.1f} s")


DESTROY_TRIES = 3


def _after_failure(ctx: Context, reason: str, log: Log, cancel: CancelToken) -> str:
    """Destroy what this attempt rented, unless asked to keep it; returns what is left billing. A destroy that still
    fails after its tries, or a rollback the last signal abandoned, raises CleanupFailedError naming the teardown."""
    if ctx.rental is None:
        return "nothing was rented, nothing left billing"
    rental = ctx.refresh()
    if not rental.is_open:
        return f"rental {rental.id} {rental.status}, nothing left billing"
    if rental.provider_id is None:
        ctx.ledger.set_status(rental.id, L.INTENT, f"failed before the provider gave an id: {reason}")
        log(
            f"rental {rental.id} may exist without an id; `deploy status` will show it, `deploy teardown --all` ends it"
        )
        return f"rental {rental.id} may exist without an id: `deploy status` shows it, `deploy teardown --all` ends it"
    ctx.ledger.set_status(rental.id, L.FAILED, reason)
    if ctx.host is not None:
        ctx.host.close()
        ctx.host = None
    what = f"rental {rental.id} ({rental.provider} instance {rental.provider_id})"
    if ctx.options.keep_on_failure:
        log(f"kept {what} for inspection: `deploy teardown {rental.id}`")
        return f"kept {what} for inspection, left billing: run `deploy teardown {rental.id}`"
    log(f"destroying {what}")
    try:
        with cancel.rolling_back(f"destroying {what}"):
            _destroy(ctx, rental, reason, log)
    except Abandon:
        raise CleanupFailedError(
            f"rollback abandoned: {what} may be left billing: run `deploy teardown {rental.id}`"
        ) from None
    except Exception as exc:
        raise CleanupFailedError(
            f"could not destroy {rental.provider} instance {rental.provider_id} after a failed provision ({exc}); "
            f"it may still bill: run `deploy teardown {rental.id}`"
        ) from exc
    return f"rental {rental.id} destroyed, nothing left billing"


def _destroy(ctx: Context, rental, reason: str, log: Log) -> None:
    """By id, tried again: a provider that failed once (an outage, a rate limit past the CLI's own retries) may
    answer a moment later, and each try's failure is said."""
    for attempt in range(1, DESTROY_TRIES + 1):
        try:
            end_rental(ctx.provider, ctx.ledger, rental, ctx.settings, reason=f"provision failed at {reason}", log=log)
            return
        except DeployError as exc:
            if attempt == DESTROY_TRIES:
                raise
            log(f"destroy of rental {rental.id} failed ({exc}); trying again ({attempt + 1}/{DESTROY_TRIES})")
            time.sleep(2.0 * attempt)
            rental = ctx.ledger.require(rental.id)
            if not rental.is_open:
                return


def _left(ctx: Context) -> str:
    """What an abandoned attempt leaves, from its ledger row."""
    if ctx.rental is None:
        return "nothing was rented"
    rental = ctx.refresh()
    if not rental.is_open:
        return f"rental {rental.id} {rental.status}, nothing left billing"
    if rental.provider_id is None:
        return f"rental {rental.id} may exist without an id: `deploy teardown --all` ends it"
    return (
        f"rental {rental.id} ({rental.provider} instance {rental.provider_id}) left billing: "
        f"run `deploy teardown {rental.id}`"
    )


def _quiet(log: Log) -> Log:
    """The rollback's log: a terminal that hung up (SIGHUP) must not stop the destroy."""

    def say(message: str) -> None:
        with contextlib.suppress(OSError):
            log(message)

    return say


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
