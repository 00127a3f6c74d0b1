"""`deploy scale N`: add replicas (provisioned in parallel) or remove them (drained first, then destroyed)."""

from __future__ import annotations

from typing import Annotated

import typer

from deploy import output
from deploy.commands import options as c


def scale(
    replicas: Annotated[int, typer.Argument(help="How many replicas the fleet should have.")],
    fleet: c.Fleet_ = "default",
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for a removed replica's streams to finish.")
    ] = 600.0,
    interruptible: Annotated[
        bool | None,
        typer.Option(
            "--interruptible/--on-demand",
            help="New replicas at a bid (vast's interruptible price) or on demand (default: as the fleet's spec says).",
            show_default=False,
        ),
    ] = None,
    bid: c.Bid = None,
    bid_over_min: c.BidOverMin = None,
    on_demand_min: Annotated[
        int | None,
        typer.Option(help="--interruptible: keep at least this many replicas on demand.", show_default=False),
    ] = None,
    json_: c.Json = False,
) -> None:
    """Grow or shrink a fleet; the gateway (if running) is reloaded without dropping streams.

    Removal drains first: the replica gets no new requests, its streams finish, then it is destroyed.
    New replicas are provisioned like the fleet's first ones (same provider, GPU list, model).

    Examples:
      deploy scale 3
      deploy scale 1 --drain-timeout 120
      deploy scale 4 --interruptible --on-demand-min 1      # new replicas at a bid, one kept on demand
    """
    from deploy.cancel import handle_signals
    from deploy.fleet.scale import scale as run

    c.positive("--drain-timeout", drain_timeout)
    mix = {"interruptible": interruptible, "bid_usd_h": c.number("--bid", bid),
           "bid_over_min_pct": c.number("--bid-over-min", bid_over_min), "on_demand_min": on_demand_min}  # fmt: skip
    if any(v is not None for v in mix.values()):  # the fleet's spec for its next replicas
        from deploy.fleet.mix import set_mix

        set_mix(c.settings(), fleet, **mix)
    # SIGINT, SIGTERM and SIGHUP set one cancel token (deploy/cancel.py): new replicas destroy what they rented,
    # a wait stops and the last line says what was left; the replicas' rollbacks always finish.
    with handle_signals(abandon=False):
        result = run(c.settings(), fleet, replicas, log=output.progress, drain_s=drain_timeout)
    if json_:
        output.emit_json(result.as_dict())
        return
    output.emit_text(
        f"fleet {fleet}: {len(result.active)} active ({', '.join(result.active)}); "
        f"added {', '.join(result.added) or 'none'}; removed {', '.join(result.removed) or 'none'}"
    )
