"""`deploy autoscale FLEET`: size a fleet to its load between --min and --max, in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer

from deploy import output
from deploy.commands import options as c
from deploy.errors import UsageError

Duration = Annotated[str | None, typer.Option(show_default=False)]


def autoscale(
    fleet: Annotated[str, typer.Argument(help="Which fleet (see `deploy status`).")] = "default",
    min_: Annotated[int, typer.Option("--min", help="Never fewer replicas than this.")] = 1,
    max_: Annotated[int, typer.Option("--max", help="Never more replicas than this.")] = 4,
    target_streams: Annotated[
        float,
        typer.Option(help="Streams one replica should carry (its slots, CSM_MAX_STREAMS, or fewer to grow earlier)."),
    ] = 4.0,
    scale_up_after: Annotated[
        str, typer.Option(help="Grow once the load stayed above target (or requests queued or got 429) this long.")
    ] = "1m",
    scale_down_after: Annotated[
        str, typer.Option(help="Shrink once one replica fewer would still stay under 70% of target this long.")
    ] = "10m",
    cooldown: Annotated[str, typer.Option(help="Hold this long after any change.")] = "2m",
    max_usd_per_hour: Annotated[
        str | None,
        typer.Option(help="Hard cap on the whole fleet's USD per hour: no growth past it.", show_default=False),
    ] = None,
    interval: Annotated[str, typer.Option(help="Time between checks.")] = "15s",
    drain_timeout: Annotated[str, typer.Option(help="How long a removed replica's streams may take.")] = "10m",
    once: Annotated[bool, typer.Option("--once", help="One check and its action, then exit.")] = False,
    json_: c.Json = False,
) -> None:
    """Every --interval: replace replicas whose box was outbid or stopped, read each replica's /metrics and the
    gateway's stats, then grow (a parallel provision like the fleet's others), shrink (drain, then destroy) or hold.
    Each decision is printed with its reason and changes are written to the ledger as `autoscale` events.

    Examples:
      deploy autoscale --min 1 --max 4 --target-streams 3
      deploy autoscale gpu --min 2 --max 8 --scale-down-after 20m --max-usd-per-hour 3.5
      deploy autoscale --min 1 --max 4 --once --json      # one decision (a JSON line), for cron or a script
    """
    from deploy.cancel import handle_signals
    from deploy.fleet.autoscale import LoopOptions
    from deploy.fleet.autoscale import autoscale as run
    from deploy.fleet.autoscale_policy import Policy
    from deploy.ledger.fleets import FleetStore

    try:
        policy = Policy(
            min_replicas=min_,
            max_replicas=max_,
            target_streams=target_streams,
            scale_up_after_s=c.duration("--scale-up-after", scale_up_after) or 0.0,
            scale_down_after_s=c.duration("--scale-down-after", scale_down_after) or 0.0,
            max_usd_per_h=c.number("--max-usd-per-hour", max_usd_per_hour),
            cooldown_s=c.duration("--cooldown", cooldown) or 0.0,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    opts = LoopOptions(
        interval_s=c.duration("--interval", interval) or 15.0,
        drain_s=c.duration("--drain-timeout", drain_timeout) or 600.0,
        once=once,
    )
    s = c.settings()
    with c.open_ledger() as ledger:
        FleetStore(ledger).get(fleet)  # an unknown fleet: one line, before any loop starts
    # SIGINT, SIGTERM and SIGHUP set one cancel token (deploy/cancel.py): the loop stops at its next wait, replicas
    # being added destroy what they rented, and the last line says what was left.
    with handle_signals(abandon=False):
        run(s, fleet, policy, opts, log=output.progress, emit=_json_line if json_ else None)


def _json_line(decision: dict) -> None:
    """--json: one decision per line (JSON Lines), so a reader can follow the loop as it runs."""
    import json

    output.emit_text(json.dumps(decision, default=str, sort_keys=True))
