"""`deploy gateway start|stop|status|reload`: HAProxy in front of a fleet, its config generated from the ledger.

Clients use the gateway's own token (its file is printed, never the token); each replica's token is added towards
that replica. Reloads (after scale or heal) keep streams in flight.

Examples:
  deploy gateway start --port 8080
  deploy gateway status --json
  deploy generate --endpoint http://127.0.0.1:8080 --token-file ~/.csm-deploy/tokens/gateway-default.token "Hi."
  deploy gateway stop
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from deploy import output
from deploy.commands import options as c
from deploy.errors import UsageError

app = typer.Typer(
    name="gateway",
    help="HAProxy on this machine in front of a fleet's replicas (leastconn, /ready checks, token at the gate).",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def start(
    fleet: c.Fleet_ = "default",
    port: Annotated[int, typer.Option(help="The port clients connect to.")] = 8080,
    bind: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    check_interval: Annotated[float, typer.Option(help="Seconds between /ready checks of each replica.")] = 1.0,
    json_: c.Json = False,
) -> None:
    """Start the fleet's gateway and wait until every replica was checked once."""
    from deploy.gateway.fleet_gateway import gateway_start

    if not 0 < port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, not {port}")
    if not 0.1 <= check_interval <= 60:
        raise UsageError(f"--check-interval must be between 0.1 and 60 seconds, not {check_interval}")
    info = gateway_start(c.settings(), fleet, bind=bind, port=port, check_ms=int(check_interval * 1000))
    _emit(fleet, info, json_)


@app.command()
def stop(
    fleet: c.Fleet_ = "default",
    now: Annotated[bool, typer.Option("--now", help="Cut streams in flight instead of letting them end.")] = False,
    json_: c.Json = False,
) -> None:
    """Stop the gateway; streams in flight finish first unless --now."""
    from deploy.gateway.fleet_gateway import gateway_stop

    stopped = gateway_stop(c.settings(), fleet, graceful=not now)
    if json_:
        output.emit_json({"fleet": fleet, "stopped": stopped})
    else:
        output.emit_text(f"gateway of fleet {fleet}: {'stopped' if stopped else 'was not running'}")


@app.command()
def status(fleet: c.Fleet_ = "default", json_: c.Json = False) -> None:
    """The gateway's process, URL, token file, and HAProxy's view of each replica."""
    _show(fleet, json_, reload=False)


@app.command()
def reload(fleet: c.Fleet_ = "default", json_: c.Json = False) -> None:
    """Point the running gateway at the fleet's active replicas (scale and heal do this themselves)."""
    _show(fleet, json_, reload=True)


def _show(fleet: str, json_: bool, *, reload: bool) -> None:
    from deploy.gateway.fleet_gateway import gateway_info, gateway_reload
    from deploy.ledger.fleets import FleetStore

    with c.open_ledger() as ledger:
        store = FleetStore(ledger)
        f = store.get(fleet)
        if reload and not gateway_reload(c.settings(), store, f):
            raise UsageError(f"the gateway of fleet {fleet!r} is not running: `deploy gateway start`")
        info = gateway_info(c.settings(), store, store.get(fleet))
    _emit(fleet, info, json_)


def _emit(fleet: str, info: dict[str, Any], json_: bool) -> None:
    if json_:
        output.emit_json(info)
        return
    state = f"running (pid {info['pid']}) at {info['url']}" if info["running"] else "not running"
    rows = [(n, v["status"], v["current"], v["total"], v["check"]) for n, v in sorted(info["servers"].items())]
    caption = f"clients present the token in {info['token_file']}" if info.get("token_file") else None
    output.emit_table(
        f"gateway of fleet {fleet}: {state}", ("replica", "state", "open", "served", "check"), rows, caption=caption
    )
