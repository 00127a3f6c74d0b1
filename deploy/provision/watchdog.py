"""The box's watchdog, started and proven at install (part of the `start` step).

`csm-runtime watchdog` runs detached beside the server. Before it watches anything it makes one call about its own
instance with vast's instance-scoped key and writes its state file (csm_runtime/watchdog_state.py): `armed: true`,
or it exits non-zero with the reason in the file and one line in its log. This step waits for one or the other. A
watchdog that did not arm fails the step, so the driver destroys the box: a box nobody can be sure will end itself
is not left billing. `--no-watchdog` provisions without one (the step is not run).
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

from deploy.errors import ProvisionCancelled, RemoteError
from deploy.ledger.records import WatchdogRecord
from deploy.provision.context import Context
from deploy.provision.layout import BoxLayout
from deploy.provision.options import RuntimeOptions
from deploy.provision.server import WATCHDOG_NAME, watchdog_command

ARM_TIMEOUT_S = 90.0  # the watchdog asks vast again for up to ~15 s; Python's start on a busy box takes the rest
POLL_S = 0.5
_READ = "cat {state} 2>/dev/null; echo; kill -0 {pid} 2>/dev/null && echo ALIVE || echo EXITED"


def state_path(layout: BoxLayout) -> str:
    return f"{layout.dir}/watchdog.json"


def start_watchdog(ctx: Context, opts: RuntimeOptions, layout: BoxLayout) -> None:
    """Start the watchdog and wait until it armed or exited; raises RemoteError (the step fails) when it did not
    arm, after recording why in the ledger."""
    assert ctx.host is not None and opts.watchdog is not None
    rental = ctx.refresh()
    started_at = rental.started_at or rental.created_at
    state = state_path(layout)
    ctx.host.run(f"rm -f {shlex.quote(state)}", stream=False)  # a file from an earlier watchdog says nothing now
    command = watchdog_command(opts, layout, layout.dir, rate_usd_h=rental.rate_usd_h, started_at=started_at)
    pid = ctx.host.start_detached(command, name=WATCHDOG_NAME)
    limits = opts.watchdog.describe()
    seen, why = wait_armed(ctx, pid, state)
    if why is not None:
        failed = WatchdogRecord(running=False, limits=limits, error=why, state_file=state)
        ctx.ledger.update_meta(ctx.rental_id, **failed.to_meta())
        ctx.event("watchdog-failed", why)
        raise RemoteError(
            f"the box's watchdog did not arm ({why}): nothing would end this box; it is destroyed "
            "(--no-watchdog provisions without one)"
        )
    armed = WatchdogRecord(running=True, limits=limits, pid=pid, state_file=state)
    ctx.ledger.update_meta(ctx.rental_id, **armed.to_meta())
    ctx.event("watchdog", f"pid {pid}, armed for instance {seen.get('instance')}: {limits}")
    ctx.log(f"the box's watchdog armed (pid {pid}): vast takes its key; it destroys the box at {limits}")


def wait_armed(ctx: Context, pid: int, state: str) -> tuple[dict[str, Any], str | None]:
    """(the state file, None) once it says armed; (what was seen, why not) once the watchdog exited or the deadline
    passed."""
    assert ctx.host is not None
    deadline = time.monotonic() + ARM_TIMEOUT_S
    script = _READ.format(state=shlex.quote(state), pid=int(pid))
    seen: dict[str, Any] = {}
    while True:
        lines = ctx.host.run(script, stream=False, check=False, timeout=60).stdout.strip().splitlines()
        seen = _parse(lines[0]) if len(lines) > 1 else {}
        if seen.get("armed"):
            return seen, None
        if lines[-1:] != ["ALIVE"]:
            return seen, seen.get("last_error") or _log_tail(ctx) or "it exited"
        if time.monotonic() > deadline:
            return seen, f"not armed after {ARM_TIMEOUT_S:.0f} s ({seen.get('last_error') or 'no answer yet'})"
        if ctx.cancel is not None and ctx.cancel.is_set():
            raise ProvisionCancelled("cancelled while the box's watchdog armed")
        time.sleep(POLL_S)


def _parse(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _log_tail(ctx: Context) -> str:
    assert ctx.host is not None
    res = ctx.host.run(f"tail -n 3 .csm-deploy-run/{WATCHDOG_NAME}.log", stream=False, check=False)
    return (res.stdout.strip().splitlines() or [""])[-1]
