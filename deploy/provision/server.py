"""The runtime's server on a box: the command the `start` step runs, and how it is stopped on a box we do not destroy
(a provider whose `owns_boxes` is False: an SSH host you brought).

The server runs detached as its own process group (setsid); its pid is in the ledger meta (`server_pid`) and in a pid
file on the box (`server_pid_file`, default ~/.csm-deploy-run/csm-runtime.pid). The group is signalled only while
the pid file still names that pid and it is still the process started then (deploy/remote/detached.py), so a pid
the box has since reused for something else is never touched.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from typing import Any

from deploy.ledger.records import ServerRecord
from deploy.provision.certificate import local_server_args
from deploy.provision.layout import SERVER_PID, BoxLayout
from deploy.provision.options import RuntimeOptions
from deploy.remote.detached import stop_detached


def server_command(opts: RuntimeOptions, layout: BoxLayout, box_dir: str, extra: Sequence[str] = ()) -> str:
    """The detached server's command line. The environment is scrubbed of the one operator secret a LocalHost child
    would otherwise inherit (a remote box never has it: SSH forwards no environment). `extra`: more `serve` options
    (the Hub token's file, TLS: hub.py, certificate.py), paths only, never a secret."""
    q = shlex.quote
    args = [layout.runtime_bin, "serve", "--model", opts.model, "--host", opts.bind, "--port", str(opts.server_port)]
    args += ["--token-file", f"{box_dir}/token", "--profile", "auto", *extra]
    env = f"env -u VAST_API_KEY CSM_PROFILES_DIR={q(box_dir + '/profiles')}"
    env += f" CSM_VOICE_STORE_DIR={q(box_dir + '/voices')}"  # uploaded voices: the rental's own, kept across restarts
    return f"cd {q(box_dir)} && exec {env} " + " ".join(q(a) for a in args)


WATCHDOG_NAME = "csm-watchdog"  # start_detached name: .csm-deploy-run/csm-watchdog.log in the box's home


def watchdog_command(
    opts: RuntimeOptions, layout: BoxLayout, box_dir: str, *, rate_usd_h: float, started_at: float
) -> str:
    """The box's watchdog (csm-runtime watchdog): it reads the server's /metrics on the box's loopback and destroys
    the instance with vast's instance-scoped key. `VAST_URL`, where this machine sets one (a test's emulator), tells
    it where vast's API is; the operator's key never goes."""
    assert opts.watchdog is not None
    q = shlex.quote
    args = [layout.runtime_bin, "watchdog", *local_server_args(opts.bind, opts.server_port, box_dir)]
    args += ["--token-file", f"{box_dir}/token", "--state-file", f"{box_dir}/watchdog.json"]
    args += ["--started-at", f"{started_at:.3f}", *opts.watchdog.args(rate_usd_h)]
    if "--rate" not in args:  # the rate also without a spend cap: the state file then says what the box spent
        args += ["--rate", f"{rate_usd_h:g}"]
    if os.environ.get("VAST_URL"):
        args += ["--api-url", os.environ["VAST_URL"]]
    return f"cd {q(box_dir)} && exec env -u VAST_API_KEY " + " ".join(q(a) for a in args)


def stop_server(host: Any, server: ServerRecord, *, grace_s: float = 10.0) -> str:
    """SIGTERM the server's process group (SIGKILL after `grace_s`); returns stopped | killed | not-running, or
    "no server recorded" when the rental never started one."""
    pid = server.pid
    if not pid:
        return "no server recorded"
    return stop_detached(host, server.pid_file or SERVER_PID, pid=int(pid), grace_s=grace_s)
