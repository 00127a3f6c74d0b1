"""Making replicas: N provisions in parallel, each exactly as a single `deploy provision` (same steps, same rollback of
what that attempt rented), each in its own thread with its own ledger connection; one failing does not stop the
others. The fleet's GPU list is tried in order per replica.

Cancelling: the command's one cancel token (deploy/cancel.py: SIGINT, SIGTERM and SIGHUP set it; where no handler
is installed, a KeyboardInterrupt in the main thread does) is handed to every replica: each stops at its next step or
wait and destroys what its attempt rented; those rollbacks always finish. Replicas that finished first still join
the fleet; then the command ends interrupted, saying what each replica left.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from deploy.cancel import CancelToken, Interrupted, current
from deploy.errors import DeployError, NoOffersError, ProvisionCancelled, UsageError
from deploy.fleet.mix import interruptible_first
from deploy.fleet.model import Added, FleetSpec
from deploy.gateway.fleet_gateway import gateway_reload
from deploy.ledger import Ledger
from deploy.ledger.fleets import ACTIVE, FleetStore
from deploy.providers import make_provider
from deploy.provision.box_steps import ensure_ssh_key
from deploy.provision.driver import run_provision
from deploy.settings import DeploySettings

Log = Callable[[str], None]


def provision_one(
    settings: DeploySettings,
    spec: FleetSpec,
    *,
    log: Log,
    cancel: CancelToken | None = None,
    interruptible: bool | None = None,
    max_price_usd_h: float | None = None,
) -> int:
    """One replica, exactly as `deploy provision` makes one; GPU types tried in order. -> its ledger rental ID.
    `interruptible=False`: on demand even in an interruptible fleet. `max_price_usd_h`: a tighter bound on the
    offer's price than the spec's own (what a fleet's spend cap leaves)."""
    gpus = spec.gpus or (None,)
    failures = []
    with Ledger(settings.ledger_path) as ledger:
        for i, gpu in enumerate(gpus):
            provider = make_provider(spec.provider, settings, spec.options.ssh)
            try:
                options = spec.options_for(gpu, interruptible=interruptible)
                if max_price_usd_h is not None:
                    bound = min(max_price_usd_h, options.max_price or max_price_usd_h)
                    options = options.replace(max_price=round(bound, 6))
                ctx = run_provision(settings, options, provider, ledger, log=log, cancel=cancel)
            except NoOffersError as exc:
                failures.append(f"{gpu or 'any gpu'}: {exc}")
                if i + 1 < len(gpus):
                    log(f"no {gpu} could be provisioned; falling back to {gpus[i + 1]}")
                continue
            if ctx.host is not None:
                ctx.host.close()
            return ctx.rental_id
    raise NoOffersError("; ".join(failures))


def add_replicas(
    settings: DeploySettings, fleet_name: str, count: int, *, log: Log, max_price_usd_h: float | None = None
) -> Added:
    """Provision `count` replicas in parallel and add each one that passed to the fleet; `max_price_usd_h` bounds
    each one's offer price (a spend cap's room), the spec's own bound still applying."""
    with Ledger(settings.ledger_path) as ledger:
        spec = FleetSpec.from_dict(FleetStore(ledger).get(fleet_name).spec)
    if make_provider(spec.provider, settings, spec.options.ssh).uses_ssh:
        ensure_ssh_key(settings)  # made once here: parallel first uses would race on ssh-keygen
    result = Added()
    cancel = current() or CancelToken()
    kinds = spec.kinds(count, on_demand_live(settings, fleet_name))  # a mixed fleet: its on-demand minimum first

    def one(i: int) -> int:
        def say(message: str) -> None:
            log(f"replica {i}/{count}: {message}")

        def attempt(bid: bool, token: CancelToken) -> int:
            return provision_one(
                settings, spec, log=say, cancel=token, interruptible=bid, max_price_usd_h=max_price_usd_h
            )

        deadline = settings.interruptible_deadline_s
        return interruptible_first(attempt, interruptible=kinds[i - 1], deadline_s=deadline, cancel=cancel, log=say)

    outcomes: list[tuple[int, int | None, BaseException | None]] = []
    interrupted: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, count), thread_name_prefix="replica") as pool:
        futures = [pool.submit(one, i) for i in range(1, count + 1)]
        for i, f in enumerate(futures, 1):
            while True:
                try:
                    outcomes.append((i, f.result(), None))
                except KeyboardInterrupt as exc:  # no handler installed (scale, heal): stop the others, then wait
                    interrupted = interrupted or exc
                    cancel.cancel()
                    log("interrupted: each replica stops at its next step and destroys what it rented")
                    continue
                except BaseException as exc:  # noqa: BLE001 - one replica's failure is reported, not fatal
                    outcomes.append((i, None, exc))
                break
    from deploy.fleet.voices import push_to_new_replicas  # the fleet's voices first: it joins (gets traffic) after

    outcomes = push_to_new_replicas(settings, fleet_name, outcomes, log=log)
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        for i, rid, exc in outcomes:
            if rid is not None:
                store.add(fleet, rid)
                result.rental_ids.append(rid)
            else:
                why = "interrupted" if isinstance(exc, (KeyboardInterrupt, ProvisionCancelled)) else exc
                result.failures.append(f"replica {i}: {why}")
                log(f"replica {i}/{count}: failed: {why}")
    if interrupted is not None:
        raise interrupted
    if cancel.is_set():
        left = [
            f"replica {i}: " + (f"rental {rid} ready, in the fleet" if rid else str(exc)) for i, rid, exc in outcomes
        ]
        raise Interrupted(cancel.signum, "; ".join(left))
    return result


def on_demand_live(settings: DeploySettings, fleet_name: str) -> int:
    """The fleet's active replicas rented on demand (not at a bid)."""
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        return sum(1 for r in store.replicas(store.get(fleet_name), (ACTIVE,)) if not r.rental.billing.interruptible)


def create_fleet(settings: DeploySettings, name: str, spec: FleetSpec, count: int, *, log: Log) -> dict:
    """`deploy provision --replicas N`: the fleet row first (so a crash leaves it on record), then N in parallel."""
    if count < 1:
        raise UsageError(f"--replicas must be at least 1, not {count}")
    with Ledger(settings.ledger_path) as ledger:
        FleetStore(ledger).create(name, spec.as_dict())
    added = add_replicas(settings, name, count, log=log)
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(name)
        gateway_reload(settings, store, fleet)
        replicas = [r.as_dict() for r in store.replicas(fleet, (ACTIVE,))]
    result = {"fleet": name, "requested": count, "replicas": replicas, "failures": added.failures}
    if added.failures:
        got = ", ".join(added.names) or "none"
        raise DeployError(
            f"fleet {name}: {len(added.rental_ids)} of {count} replicas ready ({got}); "
            + "; ".join(added.failures)
            + f" (each failed one was rolled back; `deploy scale {count} --fleet {name}` tries again)"
        )
    return result
