"""`deploy tunnel ID`: hold an SSH tunnel to a rental's server open in the foreground, for clients that cannot open
one themselves (curl, a browser, the openai SDK). A rental whose port is mapped (`access: direct`) needs none: its
endpoint is printed as is."""

from __future__ import annotations

from typing import Annotated

import typer

from deploy import output
from deploy.commands import options as c
from deploy.errors import UsageError
from deploy.remote.tunnels import check_port_free, hold_forward


def tunnel(
    rental_id: Annotated[int, typer.Argument(help="Ledger ID (see `deploy status`).", show_default=False)],
    local_port: Annotated[
        int | None,
        typer.Option("--local-port", help="Port on this machine [default: a free one].", show_default=False),
    ] = None,
    json_: c.Json = False,
) -> None:
    """Open the SSH tunnel to a rental's server and keep it open until Ctrl-C; prints the local URL and token file.

    Examples:
      deploy tunnel 3
      deploy tunnel 3 --local-port 8000 &
      curl -H "Authorization: Bearer $(cat ~/.csm-deploy/tokens/rental-3.token)" http://127.0.0.1:8000/ready
    """
    from deploy.ledger import TUNNEL
    from deploy.remote.endpoint import recorded_endpoint

    if local_port is not None and not 0 < local_port < 65536:
        raise UsageError(f"--local-port must be between 1 and 65535, not {local_port}")
    with c.open_ledger() as ledger:
        found = recorded_endpoint(ledger, rental_id)
        server = found.server
        cacert = server.tls_cert  # an https server: the certificate pinned for it
        if not found.tunnelled:
            _emit(json_, url=found.url, token_file=server.token_file, access=server.access, cacert=cacert)
            return
        if local_port is not None:
            check_port_free(local_port)
        host = found.box(c.settings(), ledger)

    def opened(port: int) -> None:
        _emit(json_, url=found.local_url(port), token_file=server.token_file, access=TUNNEL, cacert=cacert)
        output.progress(
            f"tunnel to rental {rental_id} ({found.rental.ssh_host}:{found.port} on the box); Ctrl-C ends it"
        )

    try:
        hold_forward(host, found.port, local_port, opened)  # until SIGINT, SIGTERM or SIGHUP
        output.progress("tunnel closed")
    finally:
        host.close()


def _emit(json_: bool, *, url: str, token_file: str | None, access: str | None, cacert: str | None = None) -> None:
    """The URL and token file; for an https server also the pinned certificate clients must trust (`--cacert`)."""
    info = {"url": url, "token_file": token_file, "access": access} | ({"cacert": cacert} if cacert else {})
    if json_:
        output.emit_json(info)
    else:
        output.emit_text(f"url:        {url}\ntoken file: {token_file}" + (f"\ncacert:     {cacert}" if cacert else ""))
