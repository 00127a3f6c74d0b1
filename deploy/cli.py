"""`deploy`: the control plane's command line. This file is its table of contents.

    deploy offers      list offers for a GPU, cheapest first          commands/offers.py
    deploy provision   rent -> ... -> push -> autotune -> start -> ready  commands/provision.py
    deploy status      ledger joined with live state, orphans, ghosts commands/status.py
    deploy teardown    destroy, confirm, record the end               commands/teardown.py
    deploy cost        rate x time, beside vast's own charges         commands/cost.py
    deploy ssh         a shell on a rental, host key pinned           commands/ssh.py
    deploy tunnel      hold an SSH tunnel to a rental's server open   commands/tunnel.py
    deploy open        the playground page, token in the fragment     commands/open.py
    deploy logs        a rental's process log or ledger events        commands/logs.py
    deploy generate    speak a text through a rental's server         commands/generate.py
    deploy voice       clone a voice from a clip: add, list, rm       commands/voice.py
    deploy autotune    sweep settings on a rental, copy its profile   commands/autotune.py
    deploy gateway     HAProxy in front of a fleet: start/stop/status commands/gateway.py
    deploy scale       grow (parallel provision) or shrink (drain)    commands/scale.py
    deploy heal        replace replicas that died or stay unready     commands/heal.py
    deploy autoscale   size a fleet to its load, min..max, spend cap  commands/autoscale.py

Errors map to one line on stderr (`Error: ...`) and exit 1 via `_errors()` below; DEPLOY_DEBUG=1 adds the
traceback. A command a signal ended (deploy/cancel.py) ends with `interrupted (SIGx): <what is left billing>` and
exits 128 + the signal. Command modules import their heavy parts when they run: `deploy --help` stays fast (no
fabric, httpx, sqlite3 or torch).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from deploy.commands import (
    autoscale,
    autotune,
    cost,
    gateway,
    generate,
    heal,
    logs,
    offers,
    provision,
    scale,
    ssh,
    status,
    teardown,
    tunnel,
    voice,
)
from deploy.commands import (
    open as open_page,
)

app = typer.Typer(
    name="deploy",
    help="Rent a GPU, track every rental in a local ledger, tear it down, and see what it cost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# The command table, in the order `deploy --help` lists them.
app.command("offers")(offers.offers)
app.command("provision")(provision.provision_command)
app.command("status")(status.status)
app.command("teardown")(teardown.teardown)
app.command("cost")(cost.cost)
app.command("ssh")(ssh.ssh)
app.command("tunnel")(tunnel.tunnel)
app.command("open")(open_page.open_)
app.command("logs")(logs.logs)
app.command("generate")(generate.generate)
app.add_typer(voice.app, name="voice")
app.command("autotune")(autotune.autotune)
app.add_typer(gateway.app, name="gateway")
app.command("scale")(scale.scale)
app.command("heal")(heal.heal)
app.command("autoscale")(autoscale.autoscale)


def _show_config(value: bool) -> None:
    if not value:
        return
    from deploy.commands.options import settings
    from deploy.providers.vastai_cli import VastError, api_key_source, find_vastai

    s = settings()
    for key, val in s.as_dict().items():
        typer.echo(f"{key} = {val!r}    (DEPLOY_{key.upper()})")
    typer.echo(f"ledger = {str(s.ledger_path)!r}")
    typer.echo(f"ssh_key_path = {str(s.ssh_key_path)!r}")
    try:
        typer.echo(f"vastai = {find_vastai()!r}    (VASTAI_BIN)")
    except VastError as exc:
        typer.echo(f"vastai = None    ({exc})")
    typer.echo(f"vast_api_key = {api_key_source()!r}    (where the key comes from; never the key)")
    raise typer.Exit(0)


def _version(value: bool) -> None:
    if value:
        from deploy import __version__

        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(
    show_config: Annotated[
        bool, typer.Option("--show-config", callback=_show_config, is_eager=True, help="Print the settings and exit.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Settings come from DEPLOY_* environment variables (see --show-config); state lives under DEPLOY_HOME."""


def _errors() -> list[tuple[type[BaseException], Callable[[BaseException], str]]]:
    """Most specific first; the first isinstance match wins."""
    import sqlite3

    from csm_common.gpus import UnknownGpuError
    from deploy.errors import DeployError
    from deploy.settings import SettingsError

    return [
        (UnknownGpuError, str),
        (SettingsError, str),
        (DeployError, str),
        (NotImplementedError, str),
        (sqlite3.Error, lambda e: f"ledger: {e}"),
        (KeyboardInterrupt, lambda e: "interrupted"),
        (OSError, lambda e: f"{e.strerror or e}: {e.filename}" if getattr(e, "filename", None) else str(e)),
    ]


def main(argv: list[str] | None = None) -> int:
    debug = os.environ.get("DEPLOY_DEBUG") == "1"
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:  # the overview, and the exit code of a command line that asked for nothing
        app(args=["--help"], prog_name="deploy", standalone_mode=False)
        return 2
    try:
        result = app(args=args, prog_name="deploy", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.TyperException as exc:  # bad flags: one line, like our own errors
        print(f"Error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code or 2
    except typer.Abort:
        print("Error: aborted", file=sys.stderr)
        return 1
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        from deploy.cancel import ending

        if (ended := ending(exc)) is not None:  # a signal ended it: what was left, and 128 + the signal
            if debug:
                import traceback

                traceback.print_exc()
            with contextlib.suppress(OSError):  # a terminal that hung up: the exit code still says it
                print(ended[0], file=sys.stderr)
            return ended[1]
        for kind, message in _errors():
            if isinstance(exc, kind):
                text = message(exc)
                break
        else:
            text = f"unexpected {type(exc).__name__}: {exc} (DEPLOY_DEBUG=1 shows the traceback)"
        if debug:
            import traceback

            traceback.print_exc()
        print(f"Error: {' '.join(str(text).split())}", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 1


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
