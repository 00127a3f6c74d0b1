from __future__ import annotations

import time

import typer

from deploy import output
from deploy.commands import options as c


def status(
    json_: c.Json = False,
    provider: c.Providers = None,
) -> None:
    """The ledger joined with live state, with orphans (ours, not in the ledger) and ghosts (gone at the provider).

    Examples:
      deploy status
      deploy status --json | jq '.[] | select(.kind == "orphan")'
    """
    from deploy.fleet.report import emit_tables, fleet_reports
    from deploy.ledger.reconcile import reconcile, unknown_outcome
    from deploy.watchdog_status import watchdog_report

    with c.open_ledger() as ledger:
        rec = reconcile(ledger, c.settings(), lambda name: c.provider(name), providers=provider)
        for rid in rec.adopted:
            output.progress(f"adopted rental {rid}: found at the provider by its label (a crashed provision)")
        for e in rec.of_kind("ended"):
            output.progress(f"rental {e.rental.id} ({e.provider} {e.rental.provider_id}) is closed: {e.rental.reason}")
        for line in _ghost_lines(rec):
            output.progress(line)
        for warning in rec.warnings:
            output.progress(f"warning: {warning}")
        for e in rec.of_kind("unknown"):
            output.progress(f"rental {e.rental.id}: {unknown_outcome(e)}")
        fleets = fleet_reports(c.settings(), ledger)  # fleet lines: per replica requests, readiness, gateway state
        watchdogs = watchdog_report(rec.entries, c.settings(), ledger)  # each box's watchdog state, read over SSH
    if json_:
        replicas = {x["rental_id"]: {**x, "fleet": f["fleet"]} for f in fleets for x in f["replicas"]}
        entries = [e.as_dict() for e in rec.entries]
        for d in entries:
            if d["rental"] and d["rental"]["id"] in replicas:
                d["replica"] = replicas[d["rental"]["id"]]
            if d["rental"] and d["rental"]["id"] in watchdogs:
                d["watchdog"] = watchdogs[d["rental"]["id"]]
        output.emit_json(entries)
        _exit_if_unasked(rec)
        return _exit_if_unknown(rec)
    now = time.time()
    rows = []
    for e in rec.entries:
        r, b = e.rental, e.box
        rows.append(
            (
                r.id if r else "-",
                e.kind,
                e.provider,
                (r.provider_id if r else None) or (b.id if b else ""),
                r.status if r else "",
                ("preempted" if b.preempted else b.raw_status) if b else ("gone" if e.kind == "ghost" else ""),
                (r.gpu_name if r else None) or (b.gpu_name if b else ""),
                f"{(r.rate_usd_h if r else b.price_usd_h or 0):.3f}",
                _age(now, r.started_at if r else (b.started_at if b else None)),
                _ssh(r),
            )
        )
    cols = ("ID", "kind", "provider", "instance", "ledger", "live", "gpu", "USD/h", "age", "ssh")
    hints = []
    if rec.of_kind("orphan"):
        hints.append("orphans: `deploy teardown --all` destroys them")
    if rec.of_kind("ghost"):
        hints.append("ghosts: `deploy teardown ID` closes their ledger rows")
    output.emit_table(f"{len(rows)} open rentals", cols, rows, caption="; ".join(hints) or None)
    for rid, watchdog in sorted(watchdogs.items()):
        output.emit_text(f"rental {rid}: {watchdog['line']}")
    if fleets:
        emit_tables(fleets)
    _exit_if_unasked(rec)
    _exit_if_unknown(rec)


def _age(now: float, started: float | None) -> str:
    if not started:
        return ""
    s = max(0, int(now - started))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _ghost_lines(rec) -> list[str]:
    """Each ghost's end as `deploy cost` prices it: between its last sighting and the listing that missed it."""
    from deploy.costs.price import end_bound

    out = []
    for e in rec.of_kind("ghost"):
        if bound := end_bound(e.rental):
            rid = e.rental.id
            tail = f"`deploy teardown {rid}` closes its row"
            out.append(f"rental {rid} ({e.provider} {e.rental.provider_id}) is gone: {bound.describe()}; {tail}")
    return out


def _exit_if_unknown(rec) -> None:
    """Exit 1 while a rental's create may still rent a box: a script must not read "nothing bills" yet."""
    if rec.of_kind("unknown"):
        raise typer.Exit(1)


def _ssh(rental) -> str:
    """Where SSH reaches the rental, and by which route where its provider has two (vast: direct or proxy)."""
    if rental is None or not rental.ssh_host:
        return ""
    path = rental.ssh.path
    return f"{rental.ssh_host}:{rental.ssh_port}" + (f" ({path})" if path else "")


def _exit_if_unasked(rec) -> None:
    """Exit 1 when a provider could not be asked: its rows above come from the ledger alone, and a box the ledger
    does not know (an orphan) may be billing unseen, so a script must not read "all is well"."""
    from deploy.errors import DeployError

    if rec.warnings:
        raise DeployError(
            f"{'; '.join(rec.warnings)}: boxes the ledger does not know may be billing unseen "
            "(run `deploy status` again)"
        )
