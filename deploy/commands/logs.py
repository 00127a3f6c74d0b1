from __future__ import annotations

from typing import Annotated

import typer

from deploy import output
from deploy.commands import options as c
from deploy.errors import NotFoundError, RemoteError


def logs(
    rental_id: c.RentalId,
    name: Annotated[
        str, typer.Option(help="Which detached process's log (as started by a provision step).")
    ] = "csm-runtime",
    tail: Annotated[int, typer.Option(help="Last N lines; 0 = all.")] = 200,
    events: Annotated[bool, typer.Option(help="Show the ledger's lifecycle events instead.")] = False,
    json_: c.Json = False,
) -> None:
    """Show a rental's log: the detached process's output on the box, or the ledger's events with --events.

    Examples:
      deploy logs 3
      deploy logs 3 --events --json
    """
    from deploy.providers import provider_for

    with c.open_ledger() as ledger:
        rental = ledger.require(rental_id)
        if events:
            rows = ledger.events(rental_id)
            if json_:
                output.emit_json(rows)
            else:
                output.emit_table(
                    f"rental {rental_id} events",
                    ("at", "event", "detail"),
                    [(output.fmt_time(e["at"]), e["kind"], e["detail"]) for e in rows],
                )
            return
        host = provider_for(rental, c.settings()).host(rental, c.settings(), ledger)
        try:
            text = host.read_text(f".csm-deploy-run/{name}.log", tail_lines=tail or None)
        except (OSError, RemoteError) as exc:
            raise NotFoundError(f"no {name!r} log on rental {rental_id} yet ({exc})") from None
        finally:
            host.close()
    if json_:
        output.emit_json({"rental": rental_id, "name": name, "log": text})
    else:
        output.emit_text(text)
