"""`deploy gateway start|stop|status|reload`: HAProxy in front of a fleet, its config generated from the ledger."""

from __future__ import annotations

from typing import Annotated

import typer

from deploy import output
from deploy.commands import _common as c
from deploy.errors import UsageError

ACTIONS = ("start", "stop", "status", "reload")
Fleet_ = Annotated[str, typer.Option("--fleet", help="Which fleet (see `deploy status`).")]


def gateway(
    action: Annotated[str, typer.Argument(help="start | stop | status | reload")],
    fleet: Fleet_ = "default",
    port: Annotated[int, typer.Option(help="start: the port clients connect to.")] = 8080,
    bind: Annotated[str, typer.Option(help="start: the address to listen on.")] = "127.0.0.1",
    check_interval: Annotated[float, typer.Option(help="start: seconds between /ready checks of each replica.")] = 1.0,
    now: Annotated[
        bool, typer.Option("--now", help="stop: cut streams in flight instead of letting them end.")
    ] = False,
    json_: c.Json = False,
) -> None:
    """Run HAProxy on this machine in front of the fleet's replicas (leastconn, /ready checks, token at the gate).

    Clients use the gateway's own token (its file is printed, never the token); each replica's token is added
    towards that replica. Reloads (after scale or heal) keep streams in flight.

    Examples:
      deploy gateway start --port 8080
      deploy gateway status --json
      deploy generate --endpoint http://127.0.0.1:8080 --token-file ~/.csm-deploy/tokens/gateway-default.token "Hi."
      deploy gateway stop
    """
    from deploy import fleet_ops

    if action not in ACTIONS:
        raise UsageError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    if not 0 < port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, not {port}")
    if not 0.1 <= check_interval <= 60:
        raise UsageError(f"--check-interval must be between 0.1 and 60 seconds, not {check_interval}")
    s = c.settings()
    if action == "start":
        info = fleet_ops.gateway_start(s, fleet, bind=bind, port=port, check_ms=int(check_interval * 1000))
    elif action == "stop":
        stopped = fleet_ops.gateway_stop(s, fleet, graceful=not now)
        if json_:
            output.emit_json({"fleet": fleet, "stopped": stopped})
        else:
            output.emit_text(f"gateway of fleet {fleet}: {'stopped' if stopped else 'was not running'}")
        return
    else:
        from deploy.fleet import FleetStore

        with c.open_ledger() as ledger:
            store = FleetStore(ledger)
            f = store.get(fleet)
            if action == "reload" and not fleet_ops.gateway_reload(s, store, f):
                raise UsageError(f"the gateway of fleet {fleet!r} is not running: `deploy gateway start`")
            info = fleet_ops.gateway_info(s, store, store.get(fleet))
    if json_:
        output.emit_json(info)
        return
    state = f"running (pid {info['pid']}) at {info['url']}" if info["running"] else "not running"
    rows = [(n, v["status"], v["current"], v["total"], v["check"]) for n, v in sorted(info["servers"].items())]
    caption = f"clients present the token in {info['token_file']}" if info.get("token_file") else None
    output.emit_table(
        f"gateway of fleet {fleet}: {state}", ("replica", "state", "open", "served", "check"), rows, caption=caption
    )
