"""Stop the server the `start` step left on a box we do not destroy (the `ssh` provider: a box you brought).

The server runs detached as its own process group (setsid); its pid is in the ledger meta (`server_pid`) and in a pid
file on the box (`server_pid_file`, default ~/.csm-deploy-run/csm-runtime.pid). The group is signalled only while
the pid file still names that pid, so a pid the box has since reused for something else is never touched.
"""

from __future__ import annotations

import shlex
from typing import Any

from deploy.bootstrap import SERVER_PID
from deploy.errors import RemoteError

# stdout's last line: stopped | killed | not-running
_SCRIPT = r"""
pid={pid}; f={pid_file}
alive() {{ s=$(sed 's/.*) //' /proc/$pid/stat 2>/dev/null | cut -d' ' -f1); [ -n "$s" ] && [ "$s" != Z ] && [ "$s" != X ]; }}
if [ ! -f "$f" ] || [ "$(cat "$f")" != "$pid" ] || ! alive; then echo not-running; exit 0; fi
kill -TERM -- -$pid 2>/dev/null
for i in $(seq 1 {polls}); do alive || break; sleep 0.2; done
if alive; then kill -KILL -- -$pid 2>/dev/null; sleep 0.2; rm -f "$f"; echo killed; else rm -f "$f"; echo stopped; fi
"""


def stop_server(host: Any, meta: dict[str, Any], *, grace_s: float = 10.0) -> str:
    """SIGTERM the server's process group (SIGKILL after `grace_s`); returns stopped | killed | not-running, or
    "no server recorded" when the rental never started one."""
    pid = meta.get("server_pid")
    if not pid:
        return "no server recorded"
    script = _SCRIPT.format(
        pid=int(pid), pid_file=shlex.quote(str(meta.get("server_pid_file") or SERVER_PID)), polls=int(grace_s / 0.2)
    )
    res = host.run(f"bash -c {shlex.quote(script)}", stream=False, check=False, timeout=grace_s + 30)
    last = (res.stdout.strip().splitlines() or [""])[-1]
    if last not in ("stopped", "killed", "not-running"):
        raise RemoteError(f"could not stop the server (pid {pid}): exit {res.exit_code} {res.stderr.strip()[-200:]!r}")
    return last
