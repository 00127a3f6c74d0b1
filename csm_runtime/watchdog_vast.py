"""The watchdog's side of vast.ai: its instance-scoped key, the one call that proves the key at start, and the destroy.

vast.ai puts `CONTAINER_ID` and an instance-scoped `CONTAINER_API_KEY` into the container's environment (PID 1's: an
SSH session does not inherit them). The key can show, stop or destroy that one instance and nothing else. Every
request carries a User-Agent of its own: an edge in front of an API may refuse urllib's default one (Cloudflare's
error 1010 is a 403), and a box whose destroy is refused keeps billing.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csm_runtime import __version__

USER_AGENT = f"csm-runtime/{__version__}"
DEFAULT_API = "https://console.vast.ai"
INSTANCE_ENV_FILE = "~/.csm-deploy-instance.env"  # KEY=VALUE lines; written by the rental's onstart, mode 0600


class WatchdogError(RuntimeError):
    """The watchdog cannot do its job (no instance-scoped key, bad limits); the message says what is missing."""


class Refused(OSError):
    """vast (or an edge in front of it) refused the instance key: HTTP 401 or 403, or the instance is not there.
    Waiting does not fix this by itself, so it is recorded where `deploy status` reads it."""


class Unanswered(OSError):
    """No usable answer (connection error, timeout, 429, 5xx): worth asking again."""


@dataclass(frozen=True)
class InstanceKey:
    instance_id: str
    api_key: str = field(repr=False)


def environ_of_file(path: str = INSTANCE_ENV_FILE) -> dict[str, str]:
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in lines if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def environ_of_pid1(path: str = "/proc/1/environ") -> dict[str, str]:
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def instance_key(
    environ: dict[str, str] | None = None,
    pid1: Callable[[], dict[str, str]] = environ_of_pid1,
    saved: Callable[[], dict[str, str]] = environ_of_file,
) -> InstanceKey:
    """vast's instance-scoped credentials: this process's environment, else PID 1's (the container's own), else the
    copy the onstart saved."""
    for env in (os.environ if environ is None else environ, pid1(), saved()):
        if env.get("CONTAINER_ID") and env.get("CONTAINER_API_KEY"):
            return InstanceKey(env["CONTAINER_ID"], env["CONTAINER_API_KEY"])
    raise WatchdogError(
        "no instance-scoped key: CONTAINER_ID and CONTAINER_API_KEY are not in this environment, PID 1's or "
        f"{INSTANCE_ENV_FILE} (vast.ai sets them in the container); the box cannot destroy itself"
    )


def _excerpt(raw: bytes) -> str:
    """What vast (or the edge) said, short: the JSON `msg`/`error`, else the body's first 120 characters."""
    text = raw.decode(errors="replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:120]
    if isinstance(body, dict):
        return str(body.get("msg") or body.get("error") or body)[:120]
    return text[:120]


def call(api: str, key: InstanceKey, method: str, *, timeout: float = 30.0) -> Any:
    """One request about the key's own instance; the parsed JSON answer. 401/403 raise Refused; 429, 5xx and
    connection errors raise Unanswered; 404 raises FileNotFoundError (the instance is not there)."""
    url = f"{api.rstrip('/')}/api/v0/instances/{key.instance_id}/"
    headers = {"Authorization": f"Bearer {key.api_key}", "User-Agent": USER_AGENT, "Accept": "application/json"}
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        said = f"HTTP {exc.code}: {_excerpt(exc.read() or b'')}"
        if exc.code in (401, 403):
            raise Refused(said) from None
        if exc.code == 404:
            raise FileNotFoundError(said) from None
        raise Unanswered(said) from None
    except (urllib.error.URLError, OSError) as exc:
        raise Unanswered(f"no answer: {getattr(exc, 'reason', exc)}") from None
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        raise Unanswered(f"an answer that is not JSON: {_excerpt(raw)}") from None


def verify_instance(api: str, key: InstanceKey, *, timeout: float = 30.0) -> dict[str, Any]:
    """GET the key's own instance: proof, before anything is watched, that vast takes the key from this box.
    Returns vast's row; raises Refused when the key is refused or the instance is not there."""
    try:
        answer = call(api, key, "GET", timeout=timeout)
    except FileNotFoundError as exc:
        raise Refused(f"instance {key.instance_id} not found ({exc})") from None
    row = answer.get("instances") if isinstance(answer, dict) else None
    if not isinstance(row, dict) or not row:
        raise Refused(f"vast shows no instance {key.instance_id} for this key: {str(answer)[:120]}")
    if str(row.get("id", key.instance_id)) != str(key.instance_id):
        raise Refused(f"vast answered about instance {row.get('id')}, not {key.instance_id}")
    return row


def destroy_instance(api: str, key: InstanceKey, *, timeout: float = 30.0) -> None:
    """DELETE the instance with its own key (only a destroy ends billing: a stopped box bills its disk); 404 means
    it is gone already. Raises Refused (401/403) or Unanswered (an OSError) otherwise."""
    try:
        answer = call(api, key, "DELETE", timeout=timeout)
    except FileNotFoundError:
        return
    if isinstance(answer, dict) and answer.get("success") is False:
        raise Refused(f"destroy refused: {answer.get('msg') or answer.get('error') or answer}")
