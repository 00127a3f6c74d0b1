from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from deploy import output
from deploy.commands import options as c
from deploy.errors import UsageError


def cost(
    since: Annotated[
        str | None, typer.Option(help="Only from this date (YYYY-MM-DD, UTC) on.", show_default=False)
    ] = None,
    by: Annotated[str, typer.Option(help="instance | day")] = "instance",
    provider_charges: Annotated[bool, typer.Option(help="Ask vast for its own charges to compare.")] = True,
    json_: c.Json = False,
) -> None:
    """What the rentals cost, per rental (open ones up to now) and in total, beside vast's own charges.

    vast bills the GPU while the box runs and the disk from create to destroy (both shown); its own amount also
    holds bandwidth, which only vast counts. A rental vast has no charge row for yet shows as pending. A box that
    vanished outside the flow (its watchdog, the host) is priced to the end of vast's charges, else to the last time
    it was seen alive, and the bound of its end is shown ("ended between A and B").

    Examples:
      deploy cost
      deploy cost --since 2026-11-01 --by day --json
    """
    from deploy.costs.billing import cost_report, parse_since
    from deploy.fleet.report import emit_tables, fleet_reports

    if by not in ("instance", "day"):
        raise UsageError(f"--by must be instance or day, not {by!r}")
    try:
        start = parse_since(since)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    now = time.time()
    with c.open_ledger() as ledger:
        rentals = ledger.rentals(since=start)
        events = {r.id: ledger.events(r.id) for r in rentals}  # where the preemptions are
    theirs, note = None, None
    if provider_charges:
        theirs, note = _provider_charges(rentals, start, now)
    report = cost_report(rentals, now=now, since=start, by=by, provider_charges=theirs, events=events)
    report.provider_note = note
    with c.open_ledger() as ledger:
        fleets = fleet_reports(c.settings(), ledger, now=now, charges=theirs)  # priced as the lines are
    if json_:
        output.emit_json({**report.as_dict(), "fleets": [{"fleet": f["fleet"], **f["total"]} for f in fleets]})
        return
    if fleets:
        emit_tables(fleets)
    caption = _caption(report)
    if by == "day":
        rows = [
            (x.key, f"{x.hours:.3f}", output.fmt_usd(x.usd), _theirs(x), _diff(x), "yes" if x.open else "")
            for x in report.lines
        ]
        cols = ("day", "hours", "ours", "vast", "vast-ours", "open")
        output.emit_table("cost by UTC day", cols, rows, caption=caption)
        output.emit_text(_split_line(report))
        return
    rows = [
        (
            x.key,
            x.provider,
            x.provider_id,
            x.gpu_name,
            _kind(x),
            f"{x.rate_usd_h:.3f}",
            f"{x.hours:.3f}",
            output.fmt_usd(x.gpu_usd),
            output.fmt_usd(x.disk_usd),
            output.fmt_usd(x.usd),
            _theirs(x),
            output.fmt_usd(x.theirs_items.get("bandwidth")),
            _diff(x),
            "yes" if x.open else "",
        )
        for x in report.lines
    ]
    cols = (
        "ID",
        "provider",
        "instance",
        "gpu",
        "kind",
        "USD/h",
        "hours",
        "GPU",
        "disk",
        "ours",
        "vast",
        "vast bw",
        "vast-ours",
    )
    output.emit_table("cost by rental", (*cols, "open"), rows, caption=caption)
    output.emit_text(_split_line(report))
    for line in _bounds(report):
        output.emit_text(line)


def _split_line(report) -> str:
    """Interruptible and on-demand apart, in the report's window, with the preemptions."""
    return f"by kind: {report.split.describe()}"


def _kind(line) -> str:
    if line.kind != "interruptible" or line.bid_usd_h is None:
        return line.kind or ""
    return f"interruptible (bid ${line.bid_usd_h:.3f})"


def _bounds(report) -> list[str]:
    """One line per rental that vanished outside the flow: the bound of its end, and what it is priced to."""
    from deploy.costs.price import utc

    return [
        f"rental {x.key} ({x.provider} {x.provider_id}) vanished outside the flow: ended between "
        f"{utc(x.ended_between[0])} and {utc(x.ended_between[1])}, priced to {x.end_source} ({utc(x.ended_at)})"
        for x in report.lines
        if x.ended_between and x.ended_at is not None
    ]


def _theirs(line) -> str:
    from deploy.costs.billing import PENDING

    return "pending" if line.theirs == PENDING else output.fmt_usd(line.theirs_usd)


def _diff(line) -> str:
    return "" if line.theirs_usd is None else output.fmt_usd(line.diff_usd)


def _caption(report) -> str:
    caption = f"total {output.fmt_usd(report.total_usd)}"
    if report.theirs_total_usd is not None:
        caption += f"; vast says {output.fmt_usd(report.theirs_total_usd)} (its amount includes bandwidth)"
    if report.pending:
        caption += f"; vast has no charge rows yet for {report.pending} line(s): pending"
    if report.provider_note:
        caption += f"; {report.provider_note}"
    return caption


def _provider_charges(rentals, start: float | None, now: float) -> tuple[dict[str, dict[str, Any]], str | None]:
    """What each provider that reports charges says it billed, per instance id."""
    from deploy.errors import DeployError

    theirs: dict[str, dict[str, Any]] = {}
    notes = []
    for name in sorted({r.provider for r in rentals if r.started_at}):
        earliest = min(r.started_at for r in rentals if r.provider == name and r.started_at)
        try:
            got = c.provider(name).charges(start or earliest - 86400, now + 60)
        except NotImplementedError:
            continue
        except DeployError as exc:
            notes.append(f"{name} charges unavailable: {exc}")
            output.progress(notes[-1])
            continue
        theirs[name] = got
    return theirs, "; ".join(notes) or None
