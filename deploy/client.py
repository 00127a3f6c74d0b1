"""Client for a running csm-runtime server: stream `/v1/audio/speech` to a file (measuring TTFA and RTF), and the
voices API (upload a clip as a voice, list, delete).

Control-plane code: httpx only (no torch, no numpy). TTFA is the time from sending the request to the first audio
byte as the client saw it; RTF is wall time / audio duration (below 1 means faster than real time). Audio duration is
exact for wav/pcm (from the byte count); for flac/mp3/opus it is read back with soundfile when that is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from deploy.errors import DeployError, UsageError

if TYPE_CHECKING:  # httpx is imported where it is used: `deploy --help` must not pay for it
    import httpx

SAMPLE_RATE = 24_000
WAV_HEADER_BYTES = 44
FORMATS = ("wav", "pcm", "flac", "mp3", "opus")
PLAYERS = (
    ("ffplay", ["-nodisp", "-autoexit", "-loglevel", "error"]),
    ("paplay", []),
    ("aplay", ["-q"]),
    ("afplay", []),
)


class ServerError(DeployError):
    """The server refused a request or could not be reached; the message is the server's own when it sent one.
    `status` is the HTTP status it answered (None: no answer)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class GenerateError(ServerError):
    """The server refused the speech request or the stream broke."""


@dataclass
class Result:
    path: str
    format: str
    bytes: int
    audio_s: float | None
    ttfa_s: float
    wall_s: float

    @property
    def rtf(self) -> float | None:
        return self.wall_s / self.audio_s if self.audio_s else None

    def as_dict(self) -> dict:
        return {**asdict(self), "rtf": self.rtf}


def _server_message(response: httpx.Response) -> str:
    try:
        body = json.loads(response.read() or b"{}")
        message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("detail")
    except (ValueError, AttributeError):
        message = None
    return message or response.reason_phrase or "no message"


def audio_seconds(path: Path, fmt: str, nbytes: int) -> float | None:
    """Duration of what was written: exact from the size for wav/pcm; decoded (optional soundfile) otherwise."""
    if fmt == "pcm":
        return nbytes / 2 / SAMPLE_RATE
    if fmt == "wav":
        return max(0, nbytes - WAV_HEADER_BYTES) / 2 / SAMPLE_RATE
    try:
        import soundfile as sf
    except ImportError:
        return None
    try:
        with sf.SoundFile(str(path)) as f:
            rate, frames = f.samplerate, _count_frames(sf, f)
    except Exception:  # noqa: BLE001 - a duration we cannot read is "unknown", not a failed download
        return None
    if fmt == "flac":
        fix_flac_header(path, frames)
    return frames / rate


def _count_frames(sf, f) -> int:
    """Decode to the end without seeking: a streamed FLAC says 'length unknown', and soundfile's read()/blocks()
    seek after every read, which libsndfile refuses for such a file. Hence the low-level read loop."""
    n, total = 65536, 0
    buf = sf._ffi.new("float[]", n * f.channels)
    while got := sf._snd.sf_readf_float(f._file, buf, n):
        total += got
    return total


def fix_flac_header(path: Path, frames: int) -> None:
    """Write the real sample count into a streamed FLAC's STREAMINFO (it was 0 = unknown while streaming)."""
    with path.open("r+b") as f:
        head = f.read(26)
        if len(head) < 26 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
            return
        packed = int.from_bytes(head[18:26], "big")
        packed = (packed & ~((1 << 36) - 1)) | (frames & ((1 << 36) - 1))
        f.seek(18)
        f.write(packed.to_bytes(8, "big"))


def fix_wav_header(path: Path) -> None:
    """A streamed WAV says 'length unknown'; once the file is complete, write the real sizes for strict readers."""
    size = path.stat().st_size
    if size < WAV_HEADER_BYTES:
        return
    with path.open("r+b") as f:
        head = f.read(WAV_HEADER_BYTES)
        if head[:4] != b"RIFF" or head[36:40] != b"data":
            return
        f.seek(4)
        f.write(struct.pack("<I", size - 8))
        f.seek(40)
        f.write(struct.pack("<I", size - WAV_HEADER_BYTES))


def synthesize(
    endpoint: str,
    text: str,
    out: str | Path,
    *,
    token: str | None = None,
    voice: str = "alloy",
    fmt: str = "wav",
    model: str = "tts-1",
    timeout_s: float = 600.0,
    max_audio_ms: int | None = None,
    on_progress: Callable[[int, float], None] | None = None,
    cacert: str | Path | None = None,
    conversation: str | None = None,
) -> Result:
    """POST /v1/audio/speech and stream the body into `out`. `on_progress(bytes_so_far, seconds_since_start)`.
    `cacert`: the only certificate an https server may present (a rental's pinned one); a server presenting another
    is refused before the token is sent. `conversation`: the id whose earlier turns the server speaks after (a
    gateway sends every request of one conversation to the same replica)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = Path(out)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body: dict[str, object] = {"model": model, "input": text, "voice": voice, "response_format": fmt}
    if conversation:
        body["conversation"] = conversation  # early in the body: a gateway reads it from the first kilobytes
    if max_audio_ms:
        body["max_audio_ms"] = max_audio_ms  # the server's cap on this request's audio
    url = endpoint.rstrip("/") + "/v1/audio/speech"
    import httpx

    timeout = httpx.Timeout(timeout_s, connect=10.0)
    verify = _verify(cacert)
    nbytes, ttfa = 0, None
    start = time.perf_counter()
    try:
        with httpx.stream("POST", url, json=body, headers=headers, timeout=timeout, verify=verify) as response:
            if response.status_code != 200:
                raise GenerateError(f"server answered {response.status_code}: {_server_message(response)}")
            with path.open("wb") as f:
                for data in response.iter_bytes():
                    if not data:
                        continue
                    if ttfa is None:
                        ttfa = time.perf_counter() - start
                    f.write(data)
                    nbytes += len(data)
                    if on_progress:
                        on_progress(nbytes, time.perf_counter() - start)
    except httpx.HTTPError as exc:
        if ttfa is not None and not _is_cert_error(
            exc
        ):  # the body had begun: the server ended it without its last chunk (timeout, shutdown)
            raise GenerateError(
                f"the server cut the stream short after {nbytes} bytes: {path} is incomplete ({type(exc).__name__})"
            ) from None
        raise GenerateError(_transport_message(exc, endpoint, url, cacert)) from None
    wall = time.perf_counter() - start
    if fmt == "wav":
        fix_wav_header(path)
    return Result(str(path), fmt, nbytes, audio_seconds(path, fmt, nbytes), ttfa if ttfa is not None else wall, wall)


# --- the voices API -------------------------------------------------------------------------------------------------

VOICE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_voice_name(name: str) -> str:
    """The server's rule, checked here first: a name is also a path segment (and a folder of a fleet's library)."""
    if not VOICE_NAME.match(name or "") or name in (".", ".."):
        raise UsageError(f"voice name {name!r}: use 1-64 of A-Z a-z 0-9 _ . - (not . or ..)")
    return name


def _call(
    method: str,
    endpoint: str,
    path: str,
    *,
    token: str | None,
    cacert: str | Path | None,
    timeout_s: float = 300.0,
    **kwargs,
) -> dict:
    """One JSON request; a refusal is a ServerError with the server's own message and status."""
    import httpx

    url = endpoint.rstrip("/") + path
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(
            method,
            url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            verify=_verify(cacert),
            **kwargs,
        )
    except httpx.HTTPError as exc:
        raise ServerError(_transport_message(exc, endpoint, url, cacert)) from None
    if response.status_code >= 400:
        status = response.status_code
        raise ServerError(f"server answered {status}: {_server_message(response)}", status)
    try:
        return response.json()
    except ValueError:
        raise ServerError(f"{url} answered {response.status_code} without JSON") from None


def add_voice(
    endpoint: str,
    name: str,
    clip: str | Path,
    transcript: str,
    *,
    speaker: int = 0,
    description: str = "",
    replace: bool = False,
    token: str | None = None,
    cacert: str | Path | None = None,
) -> dict:
    """POST /v1/voices (multipart): the clip is streamed from its file; the server encodes it once and answers with
    the voice object."""
    check_voice_name(name)
    path = Path(clip)
    if not path.is_file():
        raise UsageError(f"{clip}: no such file")
    fields = {
        "name": name,
        "transcript": transcript,
        "speaker": str(speaker),
        "description": description,
        "replace": "true" if replace else "false",
    }
    with path.open("rb") as f:
        files = {"audio": (path.name, f, "application/octet-stream")}
        return _call("POST", endpoint, "/v1/voices", token=token, cacert=cacert, data=fields, files=files)


def list_voices(endpoint: str, *, token: str | None = None, cacert: str | Path | None = None) -> list[dict]:
    return list(_call("GET", endpoint, "/v1/voices", token=token, cacert=cacert, timeout_s=30.0).get("voices", []))


def delete_voice(endpoint: str, name: str, *, token: str | None = None, cacert: str | Path | None = None) -> dict:
    path = f"/v1/voices/{quote(check_voice_name(name), safe='')}"
    return _call("DELETE", endpoint, path, token=token, cacert=cacert, timeout_s=30.0)


def _verify(cacert: str | Path | None):
    from deploy.remote.tls import client_context

    return client_context(cacert) if cacert else True


def _is_cert_error(exc: BaseException) -> bool:
    from deploy.remote.tls import is_certificate_error

    return is_certificate_error(exc)


def _transport_message(exc: BaseException, endpoint: str, url: str, cacert: str | Path | None) -> str:
    """One line for a request that got no answer; a certificate other than the pinned one is named as such."""
    if _is_cert_error(exc):
        trusted = f"the pinned one ({cacert})" if cacert else "one this machine trusts"
        return f"{endpoint} presented a TLS certificate other than {trusted}: refusing to send the token"
    return f"request to {url} failed: {type(exc).__name__}: {exc}"


def play(path: str | Path) -> str:
    """Play a file with the first external player found; returns its name. No player -> GenerateError."""
    for name, args in PLAYERS:
        exe = shutil.which(name)
        if exe:
            subprocess.run([exe, *args, str(path)], check=False)
            return name
    names = ", ".join(n for n, _ in PLAYERS)
    raise GenerateError(f"no audio player found (tried {names}); the audio is in {path}")
