"""Stopping what `start_detached` started on a box: the one way, for an SSH box (`Host`) and this machine
(`LocalHost`) alike, since both only need `run`.

`start_detached` starts a command as the leader of its own process group (setsid) and writes its pid to
`.csm-deploy-run/<name>.pid`. A pid is signalled only while it is still that process: the pid file names it, it is
alive, it still leads its own group, and it started no later than the pid file was written. A pid the box has since
given to something else fails the last two, so it is never touched; its stale pid file is removed.
"""

from __future__ import annotations

import shlex
from typing import Any

from deploy.errors import RemoteError

OUTCOMES = ("stopped", "killed", "not-running")

# stdout's last line: stopped | killed | not-running. `want` empty: whatever the pid file names.
_SCRIPT = r"""
f={pid_file}; want={want}
[ -f "$f" ] || {{ echo not-running; exit 0; }}
pid=$(cat "$f")
case "$pid" in ''|*[!0-9]*) echo not-running; exit 0;; esac
[ -z "$want" ] || [ "$pid" = "$want" ] || {{ echo not-running; exit 0; }}
fields() {{ sed 's/.*) //' /proc/$pid/stat 2>/dev/null; }}
alive() {{ s=$(fields | cut -d' ' -f1); [ -n "$s" ] && [ "$s" != Z ] && [ "$s" != X ]; }}
ours() {{
  set -- $(fields); [ "$3" = "$pid" ] || return 1
  boot=0; while read -r k v; do [ "$k" = btime ] && boot=$v; done < /proc/stat
  [ $(( boot + ${{20}} / $(getconf CLK_TCK) )) -le $(( $(stat -c %Y "$f") + 5 )) ]
}}
if ! alive || ! ours; then rm -f "$f"; echo not-running; exit 0; fi
kill -TERM -- -$pid 2>/dev/null
for i in $(seq 1 {polls}); do alive || break; sleep 0.2; done
if alive; then kill -KILL -- -$pid 2>/dev/null; sleep 0.2; rm -f "$f"; echo killed; else rm -f "$f"; echo stopped; fi
"""


def stop_detached(host: Any, pid_file: str, *, pid: int | None = None, grace_s: float = 10.0) -> str:
    """SIGTERM the process group the pid file names (SIGKILL after `grace_s`) while it is still the process
    `start_detached` started; `pid`: only when the file still names this one. Returns stopped | killed |
    not-running."""
    script = _SCRIPT.format(
        pid_file=shlex.quote(pid_file), want=int(pid) if pid else "", polls=max(1, int(grace_s / 0.2))
    )
    res = host.run(f"bash -c {shlex.quote(script)}", stream=False, check=False, timeout=grace_s + 30)
    last = (res.stdout.strip().splitlines() or [""])[-1]
    if last not in OUTCOMES:
        what = f"pid {pid}" if pid else pid_file
        raise RemoteError(f"could not stop {what}: exit {res.exit_code} {res.stderr.strip()[-200:]!r}")
    return last
