from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from deploy import output
from deploy.commands import options as c
from deploy.errors import DeployError, UsageError


def teardown(
    rental_id: Annotated[
        int | None, typer.Argument(help="Ledger ID (see `deploy status`).", show_default=False)
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every open rental and every orphan carrying our label.")] = False,
    provider: c.Providers = None,
    yes: c.Yes = False,
    json_: c.Json = False,
) -> None:
    """Destroy, confirm it is gone, and record the end time.

    Every provider with credentials here is asked for boxes carrying our label, even with an empty ledger. A rental
    whose create may still rent a box (a provision killed during its create) stays open and the command exits 1
    until a listing taken after its create window finds the box (destroyed then) or nothing (closed as not created).

    Examples:
      deploy teardown 3
      deploy teardown --all --yes
      deploy teardown --all --yes -p vast
    """
    from deploy.ledger.reconcile import Entry, reconcile, unknown_outcome
    from deploy.providers import provider_for
    from deploy.provision.release import end_rental

    if (rental_id is None) == (not all_):
        raise UsageError("give one rental ID or --all")
    s = c.settings()
    done: list[dict[str, object]] = []
    failed: list[str] = []
    unknown: list[Entry] = []
    rec = None
    with c.open_ledger() as ledger:
        if all_:
            rec = reconcile(ledger, s, lambda name: c.provider(name), providers=provider)
            for warning in rec.warnings:
                output.progress(f"warning: {warning}")
            targets = [e for e in rec.entries if e.kind in ("tracked", "ghost", "unconfirmed", "orphan")]
            unknown = rec.of_kind("unknown")
            if provider:
                targets = [e for e in targets if e.provider in provider]
                unknown = [e for e in unknown if e.provider in provider]
            if not targets and not unknown:
                output.progress("nothing open: the ledger and the providers agree")
            elif not yes:
                _confirm(f"destroy {len(targets)} rentals ({', '.join(_name(e) for e in targets)})?")
        else:
            rental = ledger.require(rental_id)
            if not rental.is_open:
                raise UsageError(f"rental {rental_id} is already closed ({rental.status})")
            targets, unknown = _one(ledger, s, rental)
        for e in targets:
            rental = e.rental
            if rental is None or (e.kind == "orphan" and not rental.is_open):
                rental = _record_orphan(ledger, s.label_prefix, e)
            output.progress(f"tearing down rental {rental.id} ({rental.provider} {rental.provider_id or '-'})")
            try:
                ended = end_rental(provider_for(rental, s), ledger, rental, s, reason="teardown", log=output.progress)
            except (DeployError, OSError) as exc:
                billing = f"{rental.provider} {rental.provider_id}" if rental.provider_id else "an unconfirmed rental"
                failed.append(f"rental {rental.id} ({billing} may still bill; its row stays open): {exc}")
                continue
            row = {
                "id": rental.id,
                "provider": rental.provider,
                "provider_id": rental.provider_id,
                "status": ended.status,
            }
            done.append({**row, "server": ended.server} if ended.server else row)
    if json_:
        output.emit_json({"closed": done, "failed": failed, "unknown": [e.as_dict() for e in unknown]})
    else:
        for d in done:
            server = f" (server on the box: {d['server']})" if d.get("server") else ""
            output.emit_text(f"rental {d['id']}: {d['provider']} {d['provider_id'] or '-'} {d['status']}{server}")
    for e in unknown:
        output.progress(f"rental {e.rental.id}: {unknown_outcome(e)}; its row stays open")
    if failed:
        again = f"deploy teardown {rental_id}" if rental_id is not None else "deploy teardown --all --yes"
        raise DeployError("teardown failed for " + "; ".join(failed) + f" (run it again: `{again}`)")
    if unknown:
        again = f"deploy teardown {rental_id}" if rental_id is not None else "deploy teardown --all --yes"
        last = max(e.lands_by or 0.0 for e in unknown)
        raise DeployError(
            f"create outcome unknown for {', '.join(f'rental {e.rental.id}' for e in unknown)}: a create still in "
            f"flight may rent a box; run `{again}` again after {_utc(last)} (or once `deploy status` shows the box)"
        )
    if rec is not None and rec.warnings:
        raise DeployError(
            f"the ledger's rentals were torn down, but {'; '.join(rec.warnings)}: boxes it does not know may still "
            "bill; run `deploy teardown --all` again"
        )


def _one(ledger, s, rental) -> tuple[list, list]:
    """One rental: one with no provider id is looked for by its label first (adopted if found), and is left open
    while its create may still land."""
    from deploy.commands import options as c
    from deploy.ledger.reconcile import Entry, reconcile
    from deploy.providers import provider_class

    if rental.provider_id is not None or not provider_class(rental.provider).listable:
        return [Entry("tracked", rental.provider, rental, None)], []
    rec = reconcile(ledger, s, lambda name: c.provider(name), providers=[rental.provider])
    if rec.warnings:
        raise DeployError(f"rental {rental.id} has no provider id and {'; '.join(rec.warnings)}: it may still bill")
    mine = [e for e in rec.entries if e.rental is not None and e.rental.id == rental.id]
    if mine and mine[0].kind == "unknown":
        return [], mine
    return [Entry("tracked", rental.provider, ledger.require(rental.id), None)], []


def _utc(t: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(t))


def _name(e) -> str:
    return f"{e.kind} {e.rental.id if e.rental else e.box.id}"


def _confirm(question: str) -> None:
    if not sys.stdin.isatty():
        raise UsageError(question.rstrip("?") + ": add --yes to confirm (stdin is not a terminal)")
    if not typer.confirm(question):
        raise typer.Exit(1)


def _record_orphan(ledger, prefix: str, entry):
    """An orphan gets a ledger row before it is destroyed, so its cost and end are on record too."""
    from deploy import ledger as L
    from deploy.ledger import records

    box = entry.box
    rental = ledger.record_intent(
        attempt_id="orphan",
        provider=entry.provider,
        label_prefix=prefix,
        offer_id=None,
        gpu_name=box.gpu_name,
        rate_usd_h=box.price_usd_h or 0.0,
        meta=records.orphan(box.label),
    )
    ledger.record_rented(rental.id, box.id, started_at=box.started_at)
    ledger.set_status(rental.id, L.RENTED, f"orphan adopted for teardown (label {box.label})")
    return ledger.get(rental.id)
