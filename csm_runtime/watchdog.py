"""The box's dead man's switch: a process beside the server that destroys its own instance when nobody uses it, when
its hours or spend cap is reached, or when the server has been dead for the idle time.

It is separate from the server on purpose: a crashed server must not keep the box alive. It needs no operator secret:
vast.ai puts an instance-scoped key into the container's environment (`CONTAINER_ID`, `CONTAINER_API_KEY`, in PID 1's
environment: an SSH session does not inherit them), which can destroy that one instance and nothing else. The onstart
command `deploy provision` sends saves them to INSTANCE_ENV_FILE (0600), since PID 1 may not be readable. Only the
destroy ends billing (a stopped instance still bills its disk), so that is what it calls:
`DELETE {api}/api/v0/instances/{id}/` with `Authorization: Bearer <key>`.

Activity comes from the server's /metrics: `csm_last_request_timestamp_seconds` (a speech request started or ended)
and streams running or queued. Before it acts it logs why and writes the reason to its state file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("csm_runtime.watchdog")
DEFAULT_API = "https://console.vast.ai"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


class WatchdogError(RuntimeError):
    """The watchdog cannot do its job (no instance-scoped key, bad limits); the message says what is missing."""


@dataclass(frozen=True)
class Limits:
    idle_s: float | None = None  # no request (or a dead server) for this long -> destroy
    max_hours: float | None = None
    max_spend_usd: float | None = None
    rate_usd_h: float = 0.0  # what the box costs, for the spend cap
    started_at: float = field(default_factory=time.time)  # when the box's cost clock started

    def check(self) -> None:
        if self.idle_s is None and self.max_hours is None and self.max_spend_usd is None:
            raise WatchdogError("no limit given: pass --idle-destroy-after, --max-hours or --max-spend")
        for name, value in (("idle", self.idle_s), ("max hours", self.max_hours), ("max spend", self.max_spend_usd)):
            if value is not None and not value > 0:
                raise WatchdogError(f"{name} must be positive, not {value}")
        if self.max_spend_usd is not None and not self.rate_usd_h > 0:
            raise WatchdogError("--max-spend needs the box's --rate in USD per hour")


@dataclass(frozen=True)
class Observation:
    """What one poll of the server saw."""

    alive: bool
    last_request: float | None = None  # unix time a speech request last started or ended
    busy: bool = False  # streams running or waiting


@dataclass
class Watch:
    """The decision, as pure state: feed it observations, it says when and why to destroy."""

    limits: Limits
    since: float  # when watching began: the idle clock starts here
    last_activity: float = 0.0
    dead_since: float | None = None

    def __post_init__(self) -> None:
        self.last_activity = max(self.last_activity, self.since)

    def observe(self, seen: Observation, now: float) -> str | None:
        """The reason to destroy now, or None."""
        lim = self.limits
        if seen.alive:
            self.dead_since = None
            if seen.busy:
                self.last_activity = now
            elif seen.last_request:
                self.last_activity = max(self.last_activity, seen.last_request)
        elif self.dead_since is None:
            self.dead_since = now
        hours = (now - lim.started_at) / 3600.0
        if lim.max_hours is not None and hours >= lim.max_hours:
            return f"the box ran {hours:.2f} h, its cap is {lim.max_hours:g} h"
        if lim.max_spend_usd is not None and lim.rate_usd_h * hours >= lim.max_spend_usd:
            spent = lim.rate_usd_h * hours
            return f"the box cost ${spent:.4f} at {lim.rate_usd_h:g} USD/h, its cap is ${lim.max_spend_usd:g}"
        if lim.idle_s is not None and self.dead_since is not None and now - self.dead_since >= lim.idle_s:
            return f"the server has not answered for {now - self.dead_since:.0f} s (idle limit {lim.idle_s:g} s)"
        if lim.idle_s is not None and self.dead_since is None and now - self.last_activity >= lim.idle_s:
            return f"no request for {now - self.last_activity:.0f} s (idle limit {lim.idle_s:g} s)"
        return None


# --- the server ------------------------------------------------------------------------------------------------------


def parse_activity(text: str) -> Observation:
    """The watchdog's view of a Prometheus page: last request time, and whether anything runs or waits."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if m and m.group(1) in ("csm_last_request_timestamp_seconds", "csm_active_streams", "csm_queue_depth"):
            try:
                values[m.group(1)] = float(m.group(3))
            except ValueError:
                continue
    busy = values.get("csm_active_streams", 0) > 0 or values.get("csm_queue_depth", 0) > 0
    return Observation(True, values.get("csm_last_request_timestamp_seconds") or None, busy)


def poll_server(url: str, token: str, *, timeout: float = 10.0, cafile: str | None = None) -> Observation:
    """GET /metrics with the server's token; a server that does not answer 200 counts as dead."""
    import ssl

    request = urllib.request.Request(url.rstrip("/") + "/metrics", headers={"Authorization": f"Bearer {token}"})
    try:
        # inside the try: a server that has not written its certificate yet is one that does not answer yet
        context = ssl.create_default_context(cafile=cafile) if url.startswith("https") else None
        if context is not None and cafile:
            context.check_hostname = False  # the pinned certificate itself is what is trusted, whatever its name
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return parse_activity(response.read().decode(errors="replace"))
    except (OSError, urllib.error.URLError, ValueError):
        return Observation(False)


# --- the provider --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceKey:
    instance_id: str
    api_key: str = field(repr=False)


INSTANCE_ENV_FILE = "~/.csm-deploy-instance.env"  # KEY=VALUE lines; written by the rental's onstart, mode 0600


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


def destroy_instance(api: str, key: InstanceKey, *, timeout: float = 30.0) -> None:
    """DELETE the instance with its own key; 404 means it is gone already. Raises OSError on any other answer."""
    url = f"{api.rstrip('/')}/api/v0/instances/{key.instance_id}/"
    request = urllib.request.Request(url, method="DELETE", headers={"Authorization": f"Bearer {key.api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return
        raise OSError(f"destroy answered HTTP {exc.code}") from None
    try:
        answer = json.loads(body or b"{}")
    except ValueError:
        answer = {}
    if isinstance(answer, dict) and answer.get("success") is False:
        raise OSError(f"destroy refused: {answer.get('msg') or answer.get('error') or answer}")


# --- the loop ------------------------------------------------------------------------------------------------------


@dataclass
class Settings:
    server: str
    token: str = field(repr=False)
    limits: Limits
    api: str = DEFAULT_API
    poll_s: float = 15.0
    state_file: Path | None = None
    cafile: str | None = None


def write_state(path: Path | None, **state: object) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"at": time.time(), **state}) + "\n")
    tmp.replace(path)


def run(
    settings: Settings,
    key: InstanceKey,
    *,
    poll: Callable[[], Observation] | None = None,
    destroy: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    max_destroy_tries: int | None = None,
) -> str:
    """Watch until a limit is reached, then destroy the instance (retrying with backoff); returns the reason."""
    poll = poll or (lambda: poll_server(settings.server, settings.token, cafile=settings.cafile))
    destroy = destroy or (lambda: destroy_instance(settings.api, key))
    watch = Watch(settings.limits, since=clock())
    lim = settings.limits
    limits = f"idle {lim.idle_s} s, max {lim.max_hours} h, max ${lim.max_spend_usd} at {lim.rate_usd_h} USD/h"
    log.info("watching %s for instance %s: %s", settings.server, key.instance_id, limits)
    write_state(settings.state_file, action="watching", limits=asdict(lim), instance=key.instance_id)
    while (reason := watch.observe(poll(), clock())) is None:
        sleep(settings.poll_s)
    log.warning("destroying instance %s: %s", key.instance_id, reason)
    write_state(settings.state_file, action="destroying", reason=reason, instance=key.instance_id)
    tries, delay = 0, 5.0
    while True:
        tries += 1
        try:
            destroy()
        except OSError as exc:
            log.error("destroy of instance %s failed (try %d): %s", key.instance_id, tries, exc)
            if max_destroy_tries is not None and tries >= max_destroy_tries:
                write_state(settings.state_file, action="destroy-failed", reason=reason, error=str(exc))
                raise
            sleep(delay)
            delay = min(delay * 2, 300.0)  # a box that cannot end itself keeps trying: it is billing
            continue
        log.warning("instance %s destroyed: %s", key.instance_id, reason)
        write_state(settings.state_file, action="destroyed", reason=reason, instance=key.instance_id)
        return reason
