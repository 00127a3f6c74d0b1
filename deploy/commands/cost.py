from __future__ import annotations

import time
from typing import Annotated

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
    """What the rentals cost: rate x time per rental (open ones up to now) and in total, beside vast's own charges.

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
    theirs, note = None, None
    if provider_charges and by == "instance":
        theirs, note = _provider_charges(rentals, start, now)
    report = cost_report(rentals, now=now, since=start, by=by, provider_charges=theirs)
    report.provider_note = note
    with c.open_ledger() as ledger:
        fleets = fleet_reports(c.settings(), ledger, now=now)  # $ per hour of audio, per fleet
    if json_:
        output.emit_json({**report.as_dict(), "fleets": [{"fleet": f["fleet"], **f["total"]} for f in fleets]})
        return
    if fleets:
        emit_tables(fleets)
    if by == "day":
        rows = [(x.key, f"{x.hours:.3f}", output.fmt_usd(x.usd), "yes" if x.open else "") for x in report.lines]
        output.emit_table(
            "cost by UTC day",
            ("day", "GPU hours", "ours", "open"),
            rows,
            caption=f"total {output.fmt_usd(report.total_usd)}",
        )
        return
    rows = [
        (
            x.key,
            x.provider,
            x.provider_id,
            x.gpu_name,
            f"{x.rate_usd_h:.3f}",
            f"{x.hours:.3f}",
            output.fmt_usd(x.usd),
            output.fmt_usd(x.theirs_usd),
            output.fmt_usd(x.diff_usd),
            "yes" if x.open else "",
        )
        for x in report.lines
    ]
    cols = ("ID", "provider", "instance", "gpu", "USD/h", "hours", "ours", "vast", "vast-ours", "open")
    caption = f"total {output.fmt_usd(report.total_usd)}"
    if report.theirs_total_usd is not None:
        caption += f"; vast says {output.fmt_usd(report.theirs_total_usd)}"
    output.emit_table("cost by rental", cols, rows, caption=caption)


def _provider_charges(rentals, start: float | None, now: float) -> tuple[dict[str, dict[str, float]], str | None]:
    """What each provider that reports charges says it billed, per instance id."""
    from deploy.errors import DeployError

    theirs: dict[str, dict[str, float]] = {}
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
