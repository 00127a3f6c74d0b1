"""`deploy open ID`: the playground page of a rental's server, with its token in the URL fragment.

The fragment (`/#token=...`) never leaves the browser: it is not sent to the server, the gateway or a proxy, and the
page removes it from the address bar once read. The URL is printed on this terminal only (it is a secret: do not
paste it into chats or tickets). A browser is opened when this machine has one (`--no-browser` to skip); it is given
a local redirect file, kept 0600 beside the token file, so the token never appears on a command line (`ps` shows
every process's arguments to every user). A rental behind an SSH tunnel keeps the tunnel open until Ctrl-C, for as
long as the page is used.
"""

from __future__ import annotations

import html
import os
import sys
import webbrowser
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer

from deploy import output
from deploy.commands import options as c
from deploy.errors import UsageError
from deploy.remote.tunnels import check_port_free, hold_forward


def open_(
    rental_id: Annotated[int, typer.Argument(help="Ledger ID (see `deploy status`).", show_default=False)],
    browser: Annotated[
        bool, typer.Option("--browser/--no-browser", help="Open a browser when this machine has one.")
    ] = True,
    local_port: Annotated[
        int | None,
        typer.Option(
            "--local-port",
            help="Tunnelled rentals: the port on this machine (default: a free one).",
            show_default=False,
        ),
    ] = None,
    json_: c.Json = False,
) -> None:
    """Print (and open in a browser) the playground page of a rental, its token in the URL fragment.

    Examples:
      deploy open 3
      deploy open 3 --no-browser
      BROWSER=firefox deploy open 3
    """
    from deploy.ledger import TUNNEL
    from deploy.remote.endpoint import recorded_endpoint
    from deploy.secrets.tokens import read_token_file

    if local_port is not None and not 0 < local_port < 65536:
        raise UsageError(f"--local-port must be between 1 and 65535, not {local_port}")
    with c.open_ledger() as ledger:
        found = recorded_endpoint(ledger, rental_id)
        if not found.server.token_file:
            raise UsageError(f"rental {rental_id} has no token file recorded; `deploy status` shows its state")
        token = read_token_file(found.server.token_file)
        token_file = Path(found.server.token_file).expanduser()
        cacert = found.server.tls_cert
        if not found.tunnelled:
            access = found.server.access or "direct"
            _show(rental_id, found.url, token, token_file, cacert, browser, json_, access)
            return
        if local_port is not None:
            check_port_free(local_port)
        host = found.box(c.settings(), ledger)

    def opened(port: int) -> None:
        _show(rental_id, found.local_url(port), token, token_file, cacert, browser, json_, TUNNEL)
        output.progress(f"holding the SSH tunnel to rental {rental_id} open for the page; Ctrl-C ends it")

    try:
        hold_forward(host, found.port, local_port, opened)  # until SIGINT, SIGTERM or SIGHUP
        output.progress("tunnel closed")
    finally:
        host.close()


def page_url(base: str, token: str) -> str:
    """`base/#token=...`: the fragment stays in the browser."""
    return f"{base.rstrip('/')}/#token={quote(token, safe='')}"


def _show(rid, base, token, token_file: Path, cacert, browser: bool, json_: bool, access: str) -> None:
    url = page_url(base, token)
    opened = _open_browser(url, token_file.with_name(f"{token_file.stem}.open.html")) if browser else False
    info = {"url": url, "access": access, "browser": opened}
    fingerprint = _fingerprint(cacert) if base.startswith("https:") and cacert else None
    if fingerprint:
        info |= {"cacert": cacert, "sha256": fingerprint}
    if json_:
        output.emit_json(info)
        return
    output.emit_text(f"page: {url}")
    if fingerprint:
        output.progress(
            f"the server's certificate is its own (pinned in {cacert}): your browser asks before it trusts it; "
            f"accept it only if its SHA-256 fingerprint is {fingerprint}"
        )
    if browser and not opened:
        output.progress("no browser on this machine: open the page above in yours (the token is in the URL's fragment)")


def _fingerprint(cacert: str) -> str | None:
    from deploy.remote.tls import pem_fingerprint

    try:
        return pem_fingerprint(Path(cacert).read_bytes())
    except (OSError, ValueError):
        return None


def browser_available() -> bool:
    """$BROWSER, or a graphical browser python's webbrowser knows (not a console one that would take the terminal)."""
    if os.environ.get("BROWSER"):
        return True
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        found = webbrowser.get()
    except webbrowser.Error:
        return False
    return type(found) is not webbrowser.GenericBrowser  # GenericBrowser = lynx, w3m, links: console browsers


def _open_browser(url: str, redirect: Path) -> bool:
    """Open `url` through a 0600 redirect file beside the token, so no command line carries the token. Never fails."""
    if not browser_available():
        return False
    try:
        fd = os.open(redirect, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            target = html.escape(url, quote=True)
            f.write(
                f'<!doctype html><meta charset="utf-8"><meta name="referrer" content="no-referrer">'
                f'<meta http-equiv="refresh" content="0;url={target}"><a href="{target}">csm-runtime playground</a>\n'
            )
        os.chmod(redirect, 0o600)
        return bool(webbrowser.open(redirect.resolve().as_uri()))
    except (OSError, webbrowser.Error) as exc:
        output.progress(f"could not open a browser ({exc}); open the page yourself")
        return False
