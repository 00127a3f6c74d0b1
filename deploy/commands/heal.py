"""`deploy heal`: replace replicas whose instance died or whose /ready has failed for a set time."""

from __future__ import annotations

from typing import Annotated

import typer

from deploy import output
from deploy.commands import options as c
from deploy.errors import UsageError


def heal(
    fleet: c.Fleet_ = "default",
    after: Annotated[float, typer.Option(help="Seconds /ready must keep failing before a replica is replaced.")] = 60.0,
    replica: Annotated[
        str | None, typer.Option(help="Only this replica (r12 or rental ID 12).", show_default=False)
    ] = None,
    replace: Annotated[bool, typer.Option(help="Provision a replacement (--no-replace: only remove).")] = True,
    json_: c.Json = False,
) -> None:
    """Check every replica: a dead instance is destroyed and replaced at once; one whose /ready fails is watched
    for --after seconds and replaced if it does not recover. The gateway is reloaded around the change.

    Examples:
      deploy heal
      deploy heal --after 30 --replica r12
    """
    from deploy.cancel import handle_signals
    from deploy.fleet.heal import heal as run

    if after < 0:
        raise UsageError(f"--after must be 0 or more seconds, not {after}")
    # SIGINT, SIGTERM and SIGHUP set one cancel token (deploy/cancel.py): new replicas destroy what they rented,
    # a wait stops and the last line says what was left; the replicas' rollbacks always finish.
    with handle_signals(abandon=False):
        result = run(c.settings(), fleet, after_s=after, log=output.progress, only=replica, replace=replace)
    if json_:
        output.emit_json(result.as_dict())
        return
    checked = ", ".join(f"{k}: {v}" for k, v in sorted(result.checked.items())) or "no replicas"
    output.emit_text(
        f"fleet {fleet}: {checked}; replaced {', '.join(result.replaced) or 'none'}"
        f"{' with ' + ', '.join(result.added) if result.added else ''}"
    )
