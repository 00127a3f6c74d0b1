"""What `deploy status` says about each rental's watchdog: the state file the watchdog keeps on its box, read over
SSH (`cat`, nothing imported from the runtime: the file's JSON fields are the contract, listed in
csm_runtime/watchdog_state.py).

Boxes are read in parallel, each under a short deadline, so a status over many rentals stays quick and a box that
does not answer reads "watchdog: unknown (box unreachable)" instead of holding the command up.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import threading
import time
from typing import Any

from deploy import output

READ_TIMEOUT_S = 5.0  # per box: the SSH connect, then the `cat`
UNREACHABLE = "watchdog: unknown (box unreachable)"


def watched(entry: Any) -> bool:
    """A rental whose box runs and whose provision armed a watchdog there."""
    r = entry.rental
    return bool(entry.kind == "tracked" and r and entry.box and r.watchdog and r.watchdog.running)


def watchdog_report(entries: list[Any], settings: Any, ledger: Any, *, timeout_s: float = READ_TIMEOUT_S) -> dict:
    """rental id -> {"line": what status prints, "state": the file's contents or None}, for each watched rental."""
    from deploy.providers import provider_for

    states: dict[int, dict[str, Any] | None] = {}
    threads = []
    for entry in filter(watched, entries):
        rental = entry.rental
        path = rental.watchdog.state_file
        if not path or not rental.host_key or not rental.ssh_host:
            states[rental.id] = None  # no file recorded, or no pinned key to check the box against
            continue
        try:
            host = provider_for(rental, settings).host(rental, settings, ledger, connect_timeout=timeout_s)
        except Exception:  # noqa: BLE001 - whatever keeps us from the box, status says it could not be read
            states[rental.id] = None
            continue
        thread = threading.Thread(target=_read, args=(host, path, rental.id, states, timeout_s), daemon=True)
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + 2 * timeout_s + 1
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    now = time.time()
    out = {}
    for entry in filter(watched, entries):
        state = states.get(entry.rental.id)
        out[entry.rental.id] = {"line": describe(state, now) if state else UNREACHABLE, "state": state}
    return out


def _read(host: Any, path: str, rid: int, states: dict, timeout_s: float) -> None:
    try:
        res = host.run(f"cat {shlex.quote(path)}", stream=False, check=False, timeout=timeout_s)
        value = json.loads(res.stdout) if res.ok else None
        states[rid] = value if isinstance(value, dict) else None
    except Exception:  # noqa: BLE001 - a box that does not answer (or answers nonsense) is "unknown"
        states[rid] = None
    finally:
        with contextlib.suppress(Exception):
            host.close()


def _usd(x: float) -> str:
    return f"${x:.2f}" if x == 0 or x >= 0.1 else f"${x:.4f}"


def describe(state: dict[str, Any], now: float) -> str:
    """One line: "watchdog armed: idle 12 of 60 min, $0.41 of $5.00", or what it is doing instead and why."""
    action, error = state.get("action"), state.get("last_error")
    if action == "destroyed":
        return f"watchdog destroyed the box: {state.get('reason')}"
    if action == "destroying":
        line = f"watchdog destroying the box: {state.get('reason')}"
        if error:
            wait = state.get("next_try_at")
            line += f"; {error}" + (f"; next try in {max(0, wait - now):.0f} s" if wait else "")
        return line
    if not state.get("armed"):
        return f"watchdog NOT armed: {error or 'arming'}"
    lim = state.get("limits") or {}
    parts = []
    idle_limit = lim.get("idle_s")
    idle_min = (state.get("idle_s") or 0) / 60
    parts.append(f"idle {idle_min:.0f} of {idle_limit / 60:g} min" if idle_limit else "idle off")
    spent, cap = state.get("spent_usd") or 0.0, lim.get("max_spend_usd")
    if cap:
        parts.append(f"{_usd(spent)} of {_usd(cap)}")
    elif lim.get("rate_usd_h"):
        parts.append(f"{_usd(spent)} spent")
    if lim.get("max_hours"):
        parts.append(f"{state.get('hours') or 0:.1f} of {lim['max_hours']:g} h")
    line = "watchdog armed: " + ", ".join(parts)
    last = state.get("last_check")
    if last and now - last > max(120.0, 4 * float(state.get("poll_s") or 15)):
        line += f" (last check {output.fmt_time(last)}: is it still running?)"
    return line
