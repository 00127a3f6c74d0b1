"""Money: how long a box idles past its limit before its watchdog destroys it, and how close `deploy cost` comes to
what vast billed, on the strict vast.ai emulator (its own record of each instance: GPU while running, disk from
create to destroy) through the real `deploy` console script and the real vastai CLI.

1. Accuracy of `deploy cost` against `VastEmulator.billing(iid)` for a normal rental (provision, teardown), a failed
   one (stuck pulling, rolled back: disk only), an adopted one (the create's answer lost, found by its label) and a
   self-destroyed one (its watchdog ended it; `deploy status` closed the row).
2. The watchdog's reaction: from the moment the idle limit ran out (the watchdog began watching + the limit; no
   request came) to vast receiving its destroy.

    python bench/bench_money.py [--idle 20] [--hold 30]

Table on stdout, JSON in bench/results/money.json. Needs root (the emulator's boxes are mount namespaces).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "money.json"
DEPLOY = ROOT / ".venv" / "bin" / "deploy"


def deploy(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run([str(DEPLOY), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"deploy {' '.join(args)} failed: {res.stderr[-2000:]}")
    return res


def cost_of(env: dict, rid: int) -> dict:
    lines = json.loads(deploy(env, "cost", "--json").stdout)["lines"]
    return next(x for x in lines if x["key"] == str(rid))


def compare(name: str, line: dict, bill: dict) -> dict:
    return {
        "path": name,
        "ours_usd": line["usd"],
        "vast_usd": bill["total_usd"],
        "error_pct": 100 * (line["usd"] / bill["total_usd"] - 1) if bill["total_usd"] else None,
        "ours_gpu_usd": line["gpu_usd"],
        "vast_gpu_usd": bill["gpu_usd"],
        "ours_disk_usd": line["disk_usd"],
        "vast_disk_usd": bill["disk_usd"],
        "lifetime_s": bill["disk_hours"] * 3600,
        "running_s": bill["gpu_hours"] * 3600,
        # the GPU seconds ours counts fewer than vast's (ours starts at the container's start as the onstart saw it)
        "gpu_short_s": (1 - line["gpu_usd"] / bill["gpu_usd"]) * bill["gpu_hours"] * 3600 if bill["gpu_usd"] else 0.0,
    }


def rows(home: Path):
    from deploy.ledger import Ledger

    with Ledger(home / "ledger.sqlite3") as ledger:
        return ledger.rentals()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=float, default=20.0, help="the watchdog's idle limit, seconds")
    parser.add_argument("--hold", type=float, default=30.0, help="how long the normal and adopted boxes run, seconds")
    args = parser.parse_args()

    from emulator_env import emulator_env

    from deploy.remote.host import free_port
    from tests.fakes.vast import VastEmulator
    from tests.fakes.vast.boxes import this_venv_as_image

    tmp = Path(tempfile.mkdtemp(prefix="bench-money-"))
    emu = VastEmulator(box_root=tmp / "boxes", box_setup=this_venv_as_image(ROOT / ".venv"))
    emu.start()
    home = tmp / "home"
    results: list[dict] = []
    try:
        base = {**os.environ, **emulator_env(emu, home, poll_s=0.5)}
        box_only = ["provision", "--gpu", "4090", "--no-runtime", "--json"]

        env = {**base, "DEPLOY_HOME": str(tmp / "normal")}
        out = json.loads(deploy(env, *box_only, "--max-offers", "1").stdout)
        time.sleep(args.hold)
        deploy(env, "teardown", str(out["id"]))
        results.append(compare("normal", cost_of(env, out["id"]), emu.billing(int(out["provider_id"]))))

        env = {**base, "DEPLOY_HOME": str(tmp / "failed")}
        emu.stick_loading(1002)
        out = json.loads(deploy(env, *box_only, "--max-offers", "2", "--ready-timeout", "8").stdout)
        stuck = rows(tmp / "failed")[0]
        deploy(env, "teardown", str(out["id"]))
        results.append(compare("failed (never ran)", cost_of(env, stuck.id), emu.billing(int(stuck.provider_id))))

        env = {**base, "DEPLOY_HOME": str(tmp / "adopted")}
        emu.lose_create_response(times=1, status=500)
        out = json.loads(deploy(env, *box_only, "--max-offers", "1").stdout)
        time.sleep(args.hold)
        deploy(env, "teardown", str(out["id"]))
        results.append(
            compare("adopted (create answer lost)", cost_of(env, out["id"]), emu.billing(int(out["provider_id"])))
        )

        env = {**base, "DEPLOY_HOME": str(tmp / "self")}  # the four 4090 offers are taken by now: a 3090
        runtime = ["provision", "--runtime", "--gpu", "3090", "--max-offers", "1", "--image", "bench/csm-runtime:x"]
        runtime += ["--model", "tiny-random", "--no-autotune", "--tunnel", "--server-port", str(free_port()), "--json"]
        out = json.loads(deploy(env, *runtime, "--idle-destroy", f"{args.idle:g}s").stdout)
        iid = int(out["provider_id"])
        state = json.loads((emu.box(iid).home / "csm-deploy" / "watchdog.json").read_text())
        watching_since = state["at"]  # no request comes: the idle limit runs out at watching_since + idle
        deadline = time.monotonic() + args.idle + 300
        while str(iid) in emu.running_ids():
            if time.monotonic() > deadline:
                raise RuntimeError("the watchdog never destroyed the box")
            time.sleep(0.2)
        destroyed_at = emu.billing(iid)["destroyed_at"]
        deploy(env, "status")
        results.append(compare("self-destroyed (idle)", cost_of(env, out["id"]), emu.billing(iid)))
        reaction = {
            "idle_limit_s": args.idle,
            "watchdog_poll_s": min(15.0, args.idle / 4),
            "limit_to_destroy_s": destroyed_at - (watching_since + args.idle),
        }
    finally:
        emu.stop()

    print(
        f"{'path':32} {'ours $':>10} {'vast $':>10} {'error %':>8} {'lifetime s':>10} {'running s':>10} {'GPU s short':>11}"
    )
    for r in results:
        print(
            f"{r['path']:32} {r['ours_usd']:10.6f} {r['vast_usd']:10.6f} {r['error_pct']:8.3f} "
            f"{r['lifetime_s']:10.1f} {r['running_s']:10.1f} {r['gpu_short_s']:11.2f}"
        )
    print(
        f"watchdog: idle limit {reaction['idle_limit_s']:g} s, poll {reaction['watchdog_poll_s']:g} s -> destroy "
        f"{reaction['limit_to_destroy_s']:.2f} s after the limit ran out"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                "host": platform.node(),
                "load_avg": os.getloadavg(),
                "cost": results,
                "watchdog": reaction,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
