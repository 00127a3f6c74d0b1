"""The box's dead man's switch: a process beside the server that destroys its own instance when nobody uses it, when
its hours or spend cap is reached, or when the server has been dead for the idle time.

It is separate from the server on purpose: a crashed server must not keep the box alive. It needs no operator secret:
vast's instance-scoped key does the destroy (watchdog_vast.py). Before it watches anything it arms: one call about
its own instance with that key proves vast takes it from this box; a watchdog vast refuses exits non-zero, and
`deploy provision` counts the box as failed rather than leave it billing with no one to end it. Only the destroy ends
billing (a stopped instance still bills its disk), so that is what it calls, retried with backoff until it lands.

Activity comes from the server's /metrics: `csm_last_request_timestamp_seconds` (a speech request started or ended)
and streams running or queued. What it sees, spends and does goes to its state file (watchdog_state.py), which
`deploy status` shows.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from csm_common.prometheus import values as metric_values
from csm_runtime.watchdog_state import State
from csm_runtime.watchdog_vast import (  # noqa: F401  (re-exported: the watchdog's public names)
    DEFAULT_API,
    INSTANCE_ENV_FILE,
    USER_AGENT,
    InstanceKey,
    Refused,
    Unanswered,
    WatchdogError,
    destroy_instance,
    environ_of_file,
    environ_of_pid1,
    instance_key,
    verify_instance,
)

log = logging.getLogger("csm_runtime.watchdog")
_ACTIVITY = frozenset({"csm_last_request_timestamp_seconds", "csm_active_streams", "csm_queue_depth"})
ARM_DELAYS_S = (2.0, 4.0, 8.0)  # a vast that does not answer at start is asked again this many times
DESTROY_FIRST_DELAY_S, DESTROY_MAX_DELAY_S = 5.0, 60.0  # a box whose destroy fails bills: try each minute at least


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


# A server loading its model (a download on a fresh box included) is not idle: it gets this long, or the idle limit
# when that is longer, to answer once. A short idle limit must not destroy a box before its server could serve.
START_GRACE_S = 600.0


@dataclass
class Watch:
    """The decision, as pure state: feed it observations, it says when and why to destroy."""

    limits: Limits
    since: float  # when watching began: the idle clock starts here, or when a loading server first answers
    last_activity: float = 0.0
    dead_since: float | None = None
    answered: bool = False  # the server has answered once: before that it is loading, not dead
    loading: bool = False  # a poll found it not answering yet

    def __post_init__(self) -> None:
        self.last_activity = max(self.last_activity, self.since)

    def idle_for(self, now: float) -> float:
        """Seconds the idle clock has run: since the last activity, or since the server stopped answering."""
        return max(0.0, now - (self.dead_since if self.dead_since is not None else self.last_activity))

    def observe(self, seen: Observation, now: float) -> str | None:
        """The reason to destroy now, or None."""
        lim = self.limits
        if seen.alive and not self.answered and self.loading:
            self.last_activity = max(self.last_activity, now)  # loaded: the idle clock starts now
        if seen.alive:
            self.answered = True
            self.dead_since = None
            if seen.busy:
                self.last_activity = now
            elif seen.last_request:
                self.last_activity = max(self.last_activity, seen.last_request)
        elif not self.answered:
            self.loading = True  # a server still loading its model does not answer /metrics yet
        elif self.dead_since is None:
            self.dead_since = now
        hours = (now - lim.started_at) / 3600.0
        if lim.max_hours is not None and hours >= lim.max_hours:
            return f"the box ran {hours:.2f} h, its cap is {lim.max_hours:g} h"
        if lim.max_spend_usd is not None and lim.rate_usd_h * hours >= lim.max_spend_usd:
            spent = lim.rate_usd_h * hours
            return f"the box cost ${spent:.4f} at {lim.rate_usd_h:g} USD/h, its cap is ${lim.max_spend_usd:g}"
        start_limit = max(lim.idle_s or 0.0, START_GRACE_S)
        if lim.idle_s is not None and not self.answered and now - self.since >= start_limit:
            return f"the server never answered in {now - self.since:.0f} s (start limit {start_limit:g} s)"
        if lim.idle_s is not None and self.dead_since is not None and now - self.dead_since >= lim.idle_s:
            return f"the server has not answered for {now - self.dead_since:.0f} s (idle limit {lim.idle_s:g} s)"
        if (
            lim.idle_s is not None
            and self.answered
            and self.dead_since is None
            and now - self.last_activity >= lim.idle_s
        ):
            return f"no request for {now - self.last_activity:.0f} s (idle limit {lim.idle_s:g} s)"
        return None


# --- the server ------------------------------------------------------------------------------------------------------


def parse_activity(text: str) -> Observation:
    """The watchdog's view of a Prometheus page: last request time, and whether anything runs or waits."""
    values = metric_values(text, _ACTIVITY)
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


def arm(
    settings: Settings,
    key: InstanceKey,
    *,
    verify: Callable[[], Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> State:
    """Prove the instance key before watching: one GET of the key's own instance, asked again while vast does not
    answer. Raises Refused (recorded in the state file) when vast refuses the key or never answers."""
    verify = verify or (lambda: verify_instance(settings.api, key))
    state = State(settings.state_file, key.instance_id, asdict(settings.limits), settings.poll_s)
    state.save()
    for delay in (*ARM_DELAYS_S, None):
        try:
            verify()
        except Refused as exc:
            state.save(action="refused", last_error=f"vast refused the instance key: {exc}")
            raise Refused(state.last_error) from None
        except Unanswered as exc:
            if delay is None:
                state.save(action="refused", last_error=f"vast did not answer: {exc}")
                raise Refused(state.last_error) from None
            log.warning("vast did not answer about instance %s (%s); asking again in %g s", key.instance_id, exc, delay)
            sleep(delay)
            continue
        break
    state.save(armed=True, action="watching", last_check=time.time())
    log.info("armed: vast takes this box's key for instance %s", key.instance_id)
    return state


def run(
    settings: Settings,
    key: InstanceKey,
    *,
    poll: Callable[[], Observation] | None = None,
    destroy: Callable[[], None] | None = None,
    verify: Callable[[], Any] | None = None,
    state: State | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    max_destroy_tries: int | None = None,
) -> str:
    """Arm (unless `state` says it did), watch until a limit is reached, then destroy the instance (retrying with backoff); returns the reason.
    The state file says at each step what it saw, spent and did; a refused destroy is there too, try by try."""
    poll = poll or (lambda: poll_server(settings.server, settings.token, cafile=settings.cafile))
    destroy = destroy or (lambda: destroy_instance(settings.api, key))
    state = state if state is not None and state.armed else arm(settings, key, verify=verify, sleep=sleep)
    watch = Watch(settings.limits, since=clock())
    lim = settings.limits
    limits = f"idle {lim.idle_s} s, max {lim.max_hours} h, max ${lim.max_spend_usd} at {lim.rate_usd_h} USD/h"
    log.info("watching %s for instance %s: %s", settings.server, key.instance_id, limits)
    while True:
        now = clock()
        reason = watch.observe(poll(), now)
        hours = max(0.0, (now - lim.started_at) / 3600.0)
        state.save(idle_s=watch.idle_for(now), hours=hours, spent_usd=lim.rate_usd_h * hours, last_check=now)
        if reason is not None:
            break
        sleep(settings.poll_s)
    log.warning("destroying instance %s: %s", key.instance_id, reason)
    state.save(action="destroying", reason=reason)
    tries, delay = 0, DESTROY_FIRST_DELAY_S
    while True:
        tries += 1
        try:
            destroy()
        except OSError as exc:
            what = "refused" if isinstance(exc, Refused) else "failed"
            log.error("destroy of instance %s %s (try %d): %s", key.instance_id, what, tries, exc)
            error = f"destroy {what} (try {tries}): {exc}"
            if max_destroy_tries is not None and tries >= max_destroy_tries:
                state.save(last_error=error, destroy_tries=tries, next_try_at=None)
                raise
            state.save(last_error=error, destroy_tries=tries, next_try_at=clock() + delay)
            sleep(delay)
            delay = min(delay * 2, DESTROY_MAX_DELAY_S)  # a box that cannot end itself keeps trying: it is billing
            continue
        log.warning("instance %s destroyed: %s", key.instance_id, reason)
        state.save(action="destroyed", destroy_tries=tries, next_try_at=None, last_check=clock())
        return reason
