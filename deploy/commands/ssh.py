from __future__ import annotations

import os
from typing import Annotated

import typer

from deploy.commands import options as c
from deploy.errors import UsageError


def ssh(
    rental_id: c.RentalId,
    command: Annotated[list[str] | None, typer.Argument(help="Command to run instead of a shell.")] = None,
) -> None:
    """Open a shell on a rental (OpenSSH, host key pinned from the ledger), or run one command.

    Examples:
      deploy ssh 3
      deploy ssh 3 -- nvidia-smi
    """
    from deploy.providers import provider_for

    s = c.settings()
    with c.open_ledger() as ledger:
        rental = ledger.require(rental_id)
        if not rental.is_open:
            raise UsageError(f"rental {rental_id} is closed ({rental.status})")
        provider = provider_for(rental, s)
        if provider.uses_ssh and not rental.host_key:  # pin on first use through paramiko before OpenSSH takes over
            host = provider.host(rental, s, ledger)
            host.open()
            host.close()
            rental = ledger.require(rental_id)
        argv = provider.shell_command(rental, s, command)
    os.execvp(argv[0], argv)
