"""`deploy generate`: speak a text through a running server and save the audio, showing TTFA and RTF.

Examples:
    deploy generate 3 "Hello there." -o hello.wav                  # rental 3 from the ledger
    deploy generate --endpoint http://127.0.0.1:8000 --token-file tok "Hi." -o hi.wav
    deploy generate --endpoint http://127.0.0.1:8000 --voice echo --format mp3 "Hi." -o hi.mp3 --play
    deploy generate --endpoint https://203.0.113.7:41000 --cacert rental-3.pem --token-file tok "Hi." -o hi.wav
    deploy generate 3 "Nice to meet you." --voice maya --conversation call-42    # an uploaded voice, in context

A rental whose server is on a public address speaks HTTPS: `deploy generate ID` trusts only the certificate pinned
for it when it was provisioned (deploy/remote/tls.py), and refuses a server that presents another one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from deploy import output
from deploy.client import FORMATS, play, synthesize
from deploy.commands.options import Json, settings
from deploy.errors import UsageError

_CONVERSATION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _progress(nbytes: int, elapsed: float) -> None:
    output.progress_line(f"  receiving: {nbytes / 1024:8.1f} KiB  {elapsed:6.2f} s")


def generate(
    args: Annotated[
        list[str], typer.Argument(help='[ID] "text": a ledger rental ID (or use --endpoint), then the text')
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="where to write the audio")] = Path("out.wav"),
    endpoint: Annotated[
        str | None, typer.Option(help="server URL, e.g. http://127.0.0.1:8000 (instead of an ID)")
    ] = None,
    token_file: Annotated[Path | None, typer.Option(help="file holding the bearer token")] = None,
    cacert: Annotated[
        Path | None, typer.Option(help="the certificate an https --endpoint must present (a rental's pinned PEM)")
    ] = None,
    voice: Annotated[str, typer.Option(help="voice name (GET /v1/voices; `deploy voice add` uploads one)")] = "alloy",
    conversation: Annotated[
        str | None,
        typer.Option(help="conversation id: speak after its earlier turns, then add this one ([A-Za-z0-9_.-]{1,64})"),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help=f"one of {', '.join(FORMATS)}")] = "wav",
    model: Annotated[str, typer.Option(help="model name sent to the server")] = "tts-1",
    max_audio_ms: Annotated[int | None, typer.Option(help="cap the audio length (server setting by default)")] = None,
    play_audio: Annotated[
        bool, typer.Option("--play", help="play the file afterwards with ffplay/paplay/aplay")
    ] = False,
    as_json: Json = False,
) -> None:
    """Stream speech from the server into a file; progress on stderr, result (TTFA, RTF) on stdout."""
    if conversation is not None and not _CONVERSATION.match(conversation):
        raise UsageError(f"--conversation {conversation!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    if len(args) == 2:
        if endpoint:
            raise UsageError("give either an instance ID or --endpoint, not both")
        from deploy.remote.endpoint import open_rental_endpoint

        # the ledger's endpoint, with an SSH tunnel held open while we stream when the server is on the box's loopback
        with open_rental_endpoint(args[0], settings()) as (url, recorded_token, pinned_cert):
            token_file = token_file or (Path(recorded_token) if recorded_token else None)
            cacert = cacert or (Path(pinned_cert) if pinned_cert else None)
            return _generate(
                url,
                args[-1],
                out,
                token_file,
                voice,
                fmt,
                model,
                max_audio_ms,
                play_audio,
                as_json,
                cacert,
                conversation,
            )
    elif len(args) != 1:
        raise UsageError('expected [ID] "text" (the text in quotes)')
    elif not endpoint:
        raise UsageError("no server: pass an instance ID or --endpoint URL")
    _generate(
        endpoint, args[-1], out, token_file, voice, fmt, model, max_audio_ms, play_audio, as_json, cacert, conversation
    )


def _generate(
    endpoint, text, out, token_file, voice, fmt, model, max_audio_ms, play_audio, as_json, cacert, conversation=None
) -> None:
    from deploy.secrets.tokens import read_token_file

    if cacert is not None and not cacert.is_file():
        raise UsageError(f"--cacert {cacert}: no such file")
    try:
        result = synthesize(
            endpoint,
            text,
            out,
            token=read_token_file(token_file),
            voice=voice,
            fmt=fmt,
            model=model,
            max_audio_ms=max_audio_ms,
            on_progress=None if as_json else _progress,
            cacert=cacert,
            conversation=conversation,
        )
    finally:
        if not as_json:
            output.end_progress_line()  # so an error starts a line of its own
    if as_json:
        output.emit_json(result.as_dict())
    else:
        audio = f"{result.audio_s:.2f} s audio" if result.audio_s is not None else "audio length unknown"
        rtf = f"RTF {result.rtf:.2f}" if result.rtf is not None else "RTF n/a (install soundfile to measure)"
        output.emit_text(
            f"wrote {result.path}: {audio}, {result.bytes} bytes; TTFA {result.ttfa_s * 1000:.0f} ms, {rtf} "
            f"(wall {result.wall_s:.2f} s)"
        )
    if play_audio:
        play(result.path)
