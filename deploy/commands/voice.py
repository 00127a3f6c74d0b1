"""`deploy voice add|list|rm`: a server's voices, cloned from a short clip and its transcript.

Examples:
    deploy voice add 3 maya maya.wav --transcript "Hi, I'm Maya, and this is how I sound."
    deploy voice list 3
    deploy generate 3 "Nice to meet you." --voice maya
    deploy voice rm 3 maya
    deploy voice add --fleet default maya maya.wav --transcript "..."    # every replica, and the ones added later
    deploy voice add --endpoint http://127.0.0.1:8000 --token-file tok maya maya.wav --transcript "..."

A rental is reached as `deploy generate ID` reaches it (its pinned certificate, an SSH tunnel when its server is on
the box's loopback). `--fleet` talks to every active replica directly, not through the gateway, and keeps the voice
in the fleet's library under DEPLOY_HOME, so that a replica added later gets it before it takes traffic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NamedTuple

import typer

from deploy import output
from deploy.commands import options as c
from deploy.errors import UsageError

app = typer.Typer(
    name="voice",
    help="Clone a voice from a clip (add), show (list) or delete (rm) voices on a rental, a server, or a fleet.",
    no_args_is_help=True,
    add_completion=False,
)

Args = Annotated[list[str], typer.Argument(help="[ID] then the command's arguments (no ID with --endpoint/--fleet)")]
Endpoint = Annotated[str | None, typer.Option(help="server URL instead of a rental ID")]
TokenFile = Annotated[Path | None, typer.Option(help="file holding the server's bearer token (with --endpoint)")]
CaCert = Annotated[Path | None, typer.Option(help="the certificate an https --endpoint must present")]
FleetOpt = Annotated[str | None, typer.Option("--fleet", help="every active replica of this fleet, and its library")]


class Server(NamedTuple):
    url: str
    token: str | None
    cacert: str | None


def _split(args: list[str], names: str, endpoint: str | None, fleet: str | None) -> tuple[str | None, list[str]]:
    """(rental ID or None, the command's own arguments) from `[ID] NAMES...`: the ID is there unless --endpoint or
    --fleet names the server(s)."""
    if endpoint and fleet:
        raise UsageError("give --endpoint or --fleet, not both")
    want = len(names.split())
    elsewhere = bool(endpoint or fleet)
    if len(args) == want + (0 if elsewhere else 1):
        return (None, args) if elsewhere else (args[0], args[1:])
    if elsewhere and len(args) == want + 1:
        raise UsageError("give either a rental ID or --endpoint/--fleet, not both")
    then = f", then {names}" if names else ""
    raise UsageError(f"expected a rental ID{then} (or --endpoint URL / --fleet NAME instead of the ID)")


@contextlib.contextmanager
def _server(rental: str | None, endpoint: str | None, token_file: Path | None, cacert: Path | None) -> Iterator[Server]:
    from deploy.secrets.tokens import read_token_file

    if cacert is not None and not cacert.is_file():
        raise UsageError(f"--cacert {cacert}: no such file")
    if rental is None:
        assert endpoint is not None
        yield Server(endpoint, read_token_file(token_file), str(cacert) if cacert else None)
        return
    from deploy.remote.endpoint import open_rental_endpoint

    with open_rental_endpoint(rental, c.settings()) as (url, recorded_token, pinned):
        trusted = cacert or pinned
        yield Server(url, read_token_file(token_file or recorded_token), str(trusted) if trusted else None)


def _progress(message: str) -> None:
    output.progress(message)


@app.command()
def add(
    args: Args,
    transcript: Annotated[str, typer.Option(help="what the clip says, word for word (required)")] = "",
    speaker: Annotated[int, typer.Option(help="speaker id the voice speaks as (0, 1, ...)")] = 0,
    description: Annotated[str, typer.Option(help="a note shown by `voice list`")] = "",
    replace: Annotated[bool, typer.Option("--replace", help="replace a voice of the same name")] = False,
    endpoint: Endpoint = None,
    token_file: TokenFile = None,
    cacert: CaCert = None,
    fleet: FleetOpt = None,
    as_json: c.Json = False,
) -> None:
    """Upload a clip (WAV/FLAC/OGG, 1-30 s) and its transcript as a voice: `deploy voice add [ID] NAME CLIP`."""
    from deploy.client import add_voice, check_voice_name

    rental, (name, clip_arg) = _split(args, "NAME CLIP", endpoint, fleet)
    check_voice_name(name)
    clip = Path(clip_arg)
    if not clip.is_file():
        raise UsageError(f"{clip}: no such file")
    if not transcript.strip():
        raise UsageError("--transcript is required: what the clip says, word for word")
    if speaker < 0:
        raise UsageError(f"--speaker must be 0 or more, not {speaker}")
    if fleet:
        from deploy.fleet.voices import add_fleet_voice

        result = add_fleet_voice(
            c.settings(), fleet, name, clip, transcript=transcript, speaker=speaker, description=description,
            replace=replace, log=_progress,
        )  # fmt: skip
        if as_json:
            output.emit_json(result)
        else:
            output.emit_text(f"voice {name}: added to {', '.join(result['added_to'])} (fleet {fleet}'s library)")
        return
    with _server(rental, endpoint, token_file, cacert) as s:
        voice = add_voice(
            s.url, name, clip, transcript, speaker=speaker, description=description, replace=replace,
            token=s.token, cacert=s.cacert,
        )  # fmt: skip
    if as_json:
        output.emit_json(voice)
    else:
        length = f"{voice['clip_s']:.2f} s" if voice.get("clip_s") is not None else "length unknown"
        output.emit_text(f"voice {voice.get('id', name)}: {length}, speaker {voice.get('speaker', speaker)}")


@app.command("list")
def list_(
    args: Annotated[list[str] | None, typer.Argument(help="the rental ID (none with --endpoint/--fleet)")] = None,
    endpoint: Endpoint = None,
    token_file: TokenFile = None,
    cacert: CaCert = None,
    fleet: FleetOpt = None,
    as_json: c.Json = False,
) -> None:
    """The server's voices (`deploy voice list [ID]`), or the fleet's library and which replicas have each."""
    from deploy.client import list_voices

    rental, _ = _split(list(args or []), "", endpoint, fleet)
    if fleet:
        from deploy.fleet.voices import list_fleet_voices

        rows = list_fleet_voices(c.settings(), fleet)
        if as_json:
            output.emit_json({"fleet": fleet, "voices": rows})
            return
        table = [
            (v["name"], v["speaker"], v["description"], _short(v["transcript"]), " ".join(v["on_replicas"]) or "none",
             " ".join(v["missing_on"] + [f"{r}?" for r in v["unreachable"]]))
            for v in rows
        ]  # fmt: skip
        output.emit_table(
            f"fleet {fleet}: voices", ["NAME", "SPEAKER", "DESCRIPTION", "TRANSCRIPT", "ON", "MISSING"], table
        )
        return
    with _server(rental, endpoint, token_file, cacert) as s:
        voices = list_voices(s.url, token=s.token, cacert=s.cacert)
    if as_json:
        output.emit_json({"voices": voices})
        return
    table = [
        (v.get("id"), v.get("speaker"), v.get("source"), _seconds(v.get("clip_s")), output.fmt_time(v.get("created")),
         v.get("description") or "", _short(v.get("transcript")))
        for v in voices
    ]  # fmt: skip
    output.emit_table("voices", ["NAME", "SPEAKER", "SOURCE", "CLIP", "CREATED", "DESCRIPTION", "TRANSCRIPT"], table)


@app.command()
def rm(
    args: Args,
    endpoint: Endpoint = None,
    token_file: TokenFile = None,
    cacert: CaCert = None,
    fleet: FleetOpt = None,
    as_json: c.Json = False,
) -> None:
    """Delete an uploaded voice: `deploy voice rm [ID] NAME` (with --fleet: from every replica and the library)."""
    from deploy.client import check_voice_name, delete_voice

    rental, (name,) = _split(args, "NAME", endpoint, fleet)
    check_voice_name(name)
    if fleet:
        from deploy.fleet.voices import remove_fleet_voice

        result = remove_fleet_voice(c.settings(), fleet, name, log=_progress)
        if as_json:
            output.emit_json(result)
        else:
            where = ", ".join(result["deleted_from"]) or "no replica had it"
            output.emit_text(f"voice {name}: deleted from fleet {fleet} ({where})")
        return
    with _server(rental, endpoint, token_file, cacert) as s:
        result = delete_voice(s.url, name, token=s.token, cacert=s.cacert)
    if as_json:
        output.emit_json(result)
    else:
        output.emit_text(f"voice {name}: deleted")


def _short(text: str | None, width: int = 48) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f} s"
