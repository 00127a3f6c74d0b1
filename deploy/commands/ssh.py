from __future__ import annotations

import os
import shlex
from typing import Annotated

import typer

from deploy.commands import _common as c
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
    from deploy.providers import host_for

    s = c.settings()
    with c.open_ledger() as ledger:
        rental = ledger.require(rental_id)
        if not rental.is_open:
            raise UsageError(f"rental {rental_id} is closed ({rental.status})")
        if rental.provider == "local":
            workdir = s.home_path / "local" / str(rental.provider_id)
            os.chdir(workdir)
            argv = ["bash", "-c", shlex.join(command)] if command else [os.environ.get("SHELL", "bash")]
            os.execvp(argv[0], argv)
        if not rental.host_key:  # pin on first use through paramiko before handing over to OpenSSH
            host = host_for(rental, s, ledger)
            host.open()
            host.close()
            rental = ledger.get(rental_id)
    known = s.home_path / "known_hosts"
    entry = rental.ssh_host if rental.ssh_port == 22 else f"[{rental.ssh_host}]:{rental.ssh_port}"
    known.write_text(f"{entry} {rental.host_key}\n")
    os.chmod(known, 0o600)
    argv = [
        "ssh",
        "-i",
        str(s.ssh_key_path),
        "-p",
        str(rental.ssh_port),
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "IdentitiesOnly=yes",
        f"{rental.ssh_user or s.ssh_user}@{rental.ssh_host}",
    ]
    if command:
        argv += ["--", *command]
    os.execvp("ssh", argv)
