from __future__ import annotations

import time

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
    from deploy.ledger.reconcile import reconcile

    with c.open_ledger() as ledger:
        rec = reconcile(ledger, c.settings(), lambda name: c.provider(name), providers=provider)
        for rid in rec.adopted:
            output.progress(f"adopted rental {rid}: found at the provider by its label (a crashed provision)")
        for e in rec.of_kind("ended"):
            output.progress(f"rental {e.rental.id} ({e.provider} {e.rental.provider_id}) is closed: {e.rental.reason}")
        for warning in rec.warnings:
            output.progress(f"warning: {warning}")
        fleets = fleet_reports(c.settings(), ledger)  # fleet lines: per replica requests, readiness, gateway state
    if json_:
        replicas = {x["rental_id"]: {**x, "fleet": f["fleet"]} for f in fleets for x in f["replicas"]}
        entries = [e.as_dict() for e in rec.entries]
        for d in entries:
            if d["rental"] and d["rental"]["id"] in replicas:
                d["replica"] = replicas[d["rental"]["id"]]
        output.emit_json(entries)
        return
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
                b.raw_status if b else ("gone" if e.kind == "ghost" else ""),
                (r.gpu_name if r else None) or (b.gpu_name if b else ""),
                f"{(r.rate_usd_h if r else b.price_usd_h or 0):.3f}",
                _age(now, r.started_at if r else (b.started_at if b else None)),
                f"{r.ssh_host}:{r.ssh_port}" if r and r.ssh_host else "",
            )
        )
    cols = ("ID", "kind", "provider", "instance", "ledger", "live", "gpu", "USD/h", "age", "ssh")
    hints = []
    if rec.of_kind("orphan"):
        hints.append("orphans: `deploy teardown --all` destroys them")
    if rec.of_kind("ghost"):
        hints.append("ghosts: `deploy teardown ID` closes their ledger rows")
    output.emit_table(f"{len(rows)} open rentals", cols, rows, caption="; ".join(hints) or None)
    if fleets:
        emit_tables(fleets)


def _age(now: float, started: float | None) -> str:
    if not started:
        return ""
    s = max(0, int(now - started))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
