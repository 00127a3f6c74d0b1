"""Control-plane overhead: `deploy --help` wall time, and what our own code costs in a provision.

1. `deploy --help` through the real console script, N runs, median (goal <= 0.5 s: nothing heavy imported).
2. A full `provision` (rent -> wait_running -> connect -> check) against the vast.ai emulator and a real loopback
   sshd, in this process, with the time split into: vastai CLI subprocesses (an external tool, ~1 s each), sleeps
   between polls (the waits), SSH connect + check, and the rest = our own overhead (ledger writes, parsing, logic).

    python bench/bench_cli.py [--runs 10] [--provisions 3]

Table on stdout, JSON in bench/results/cli.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "cli.json"
DEPLOY = ROOT / ".venv" / "bin" / "deploy"


def bench_help(runs: int) -> dict:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([str(DEPLOY), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return {"runs": runs, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def bench_provision(n: int) -> dict:
    from emulator_env import emulator_env

    import deploy.providers.vast as pv
    import deploy.remote.host as remote
    from deploy.ledger import Ledger
    from deploy.providers.vast import VastProvider
    from deploy.providers.vastai_cli import VastCli
    from deploy.provision.driver import run_provision
    from deploy.provision.options import ProvisionOptions
    from deploy.settings import load_settings
    from tests.fakes.sshd import start_sshd
    from tests.fakes.vast_emulator import VastEmulator

    tmp = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    sshd = start_sshd(tmp / "sshd")
    emu = VastEmulator(ssh_host=sshd.host, ssh_port=sshd.port, authorized_keys=sshd.authorized_keys)
    emu.start()
    home = tmp / "home"
    os.environ.update(emulator_env(emu, home, poll_s=0.2, DEPLOY_HOME=str(tmp / "deploy"), DEPLOY_SSH_USER=sshd.user))
    slept = [0.0]

    class CountingTime:
        """Stands in for `time` in our modules only (paramiko's threads sleep too; they are not our waits)."""

        def __getattr__(self, name: str):
            return getattr(time, name)

        @staticmethod
        def sleep(s: float) -> None:
            slept[0] += s
            time.sleep(s)

    pv.time = remote.time = CountingTime()
    ssh_s = [0.0]
    real_wait = remote.wait_for_ssh

    def timed_wait(*a, **kw):
        t = time.perf_counter()
        try:
            return real_wait(*a, **kw)
        finally:
            ssh_s[0] += time.perf_counter() - t

    rows = []
    try:
        settings = load_settings()
        for _ in range(n):
            slept[0] = ssh_s[0] = 0.0
            cli = VastCli(timeout_s=60)
            remote.wait_for_ssh = timed_wait  # Provider.open_host looks it up at call time
            with Ledger(settings.ledger_path) as ledger:
                t = time.perf_counter()
                ctx = run_provision(
                    settings, ProvisionOptions.from_settings(settings, gpu=_gpu()), VastProvider(cli), ledger
                )
                total = time.perf_counter() - t
                check_t = time.perf_counter()
                ctx.host.run("true", stream=False)
                check_s = time.perf_counter() - check_t
                ctx.host.close()
                VastProvider(VastCli(timeout_s=60)).destroy(ctx.rental.provider_id, deadline=time.monotonic() + 30)
            remote.wait_for_ssh = real_wait
            vast_s = sum(d for _, d in cli.calls)
            ssh_only = ssh_s[0]  # the sshd is up before the box runs: one try, no sleeps inside
            ours = total - vast_s - slept[0] - ssh_only - check_s
            rows.append(
                {
                    "total_s": total,
                    "vastai_calls": len(cli.calls),
                    "vastai_s": vast_s,
                    "sleep_s": slept[0],
                    "ssh_connect_s": ssh_only,
                    "check_s": check_s,
                    "ours_s": ours,
                }  # fmt: skip
            )
    finally:
        pv.time = remote.time = time
        emu.stop()
        sshd.stop()
    keys = rows[0].keys()
    return {"runs": n, "median": {k: statistics.median(r[k] for r in rows) for k in keys}, "all": rows}


def _gpu():
    from csm_common.gpus import resolve

    return resolve("4090")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--provisions", type=int, default=3)
    args = ap.parse_args()
    help_ = bench_help(args.runs)
    prov = bench_provision(args.provisions)
    m = prov["median"]
    print(f"{'measure':44} {'value':>10}")
    print(f"{'deploy --help, median of ' + str(args.runs) + ' (s)':44} {help_['median_s']:10.3f}")
    print(f"{'provision total, median of ' + str(args.provisions) + ' (s)':44} {m['total_s']:10.3f}")
    print(f"{'  vastai CLI subprocesses (s), ' + str(int(m['vastai_calls'])) + ' calls':44} {m['vastai_s']:10.3f}")
    print(f"{'  sleeps between polls (s)':44} {m['sleep_s']:10.3f}")
    print(f"{'  SSH wait + connect (s)':44} {m['ssh_connect_s']:10.3f}")
    print(f"{'  check command (s)':44} {m['check_s']:10.3f}")
    print(f"{'  our own overhead (s)':44} {m['ours_s']:10.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    doc = {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(), "help": help_,
           "provision": prov, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
