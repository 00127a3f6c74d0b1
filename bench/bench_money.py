"""Money: how long a box idles past its limit before its watchdog destroys it, and how close `deploy cost` comes to
what vast billed, on the strict vast.ai emulator (its own record of each instance: GPU while running, disk from
create to destroy) through the real `deploy` console script and the real vastai CLI.

1. Accuracy of `deploy cost` against `VastEmulator.billing(iid)` for a normal rental (provision, teardown), a failed
   one (stuck pulling, rolled back: disk only), an adopted one (the create's answer lost, found by its label), one
   adopted by `deploy status` (its row closed `not_created`, the box found running under its label: its GPU counted
   from its start, an upper bound), a ghost (destroyed with its instance key while status was not looking: priced to
   vast's charges, and without them to the last sighting, a lower bound) and a self-destroyed one (its watchdog ended
   it; `deploy status` closed the row).
2. The watchdog's reaction: from the moment the idle limit ran out (the watchdog began watching + the limit; no
   request came) to vast receiving its destroy.

    python bench/bench_money.py [--idle 20] [--hold 30] [--unseen 5]

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


def cost_of(env: dict, rid: int, *extra: str) -> dict:
    lines = json.loads(deploy(env, "cost", "--json", *extra).stdout)["lines"]
    return next(x for x in lines if x["key"] == str(rid))


NO_CHARGES = (200, {"results": [], "count": 0, "total": 0, "next_token": None}, "application/json", {})


def idle_clock_start(state_file: Path) -> float | None:
    """When the watchdog's idle clock started, from its state file while it watches: the time of its last check less
    the idle seconds it counted then (the file is rewritten whole at every check)."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    if state.get("action") != "watching" or state.get("idle_s") is None or state.get("last_check") is None:
        return None
    return state["last_check"] - state["idle_s"]


def closed_row_whose_box_appears(emu, home: Path) -> tuple[int, int]:
    """A row closed `not_created` (a create read as refused that went through), then its box under its label."""
    from deploy.ledger import NOT_CREATED, Ledger

    oid = emu.add_offer()  # one more 4090, at the first offer's price
    offer, disk_gb = emu.offers[oid], 10
    with Ledger(home / "ledger.sqlite3") as ledger:
        row = ledger.record_intent(
            attempt_id="bench",
            provider="vast",
            label_prefix="csm-deploy",
            offer_id=str(oid),
            gpu_name=offer["gpu_name"],
            rate_usd_h=offer["dph_total"],
            disk_usd_h=offer["storage_cost"] * disk_gb / 720,
        )
        ledger.close_rental(row.id, NOT_CREATED, "create refused")
    return row.id, emu.create_direct(oid, row.label)


def destroy_with_instance_key(emu, iid: int) -> None:
    """What the box's watchdog does: DELETE its own instance with vast's instance-scoped key."""
    import urllib.request

    req = urllib.request.Request(f"{emu.url}/api/v0/instances/{iid}/", method="DELETE")
    req.add_header("Authorization", f"Bearer {emu.instances[iid]['_api_key']}")
    urllib.request.urlopen(req, timeout=10).read()


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
    parser.add_argument("--unseen", type=float, default=5.0, help="a ghost's time unseen before and after its end, s")
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

        env = {**base, "DEPLOY_HOME": str(tmp / "by-status")}
        rid, iid = closed_row_whose_box_appears(emu, tmp / "by-status")
        deploy(env, "status")  # adopts it by its label
        time.sleep(args.hold)
        deploy(env, "teardown", str(rid))
        results.append(compare("adopted by status (closed not_created)", cost_of(env, rid), emu.billing(iid)))

        env = {**base, "DEPLOY_HOME": str(tmp / "ghost")}
        emu.add_offer()  # one more 4090
        out = json.loads(deploy(env, *box_only, "--max-offers", "1").stdout)
        iid = int(out["provider_id"])
        time.sleep(args.hold)
        deploy(env, "status")  # the last time it is seen alive
        time.sleep(args.unseen)
        destroy_with_instance_key(emu, iid)
        time.sleep(args.unseen)
        original = emu._endpoint
        emu._endpoint = lambda m, p, q, b: NO_CHARGES if p == "/api/v0/charges/" else original(m, p, q, b)
        deploy(env, "status")  # sees it gone; vast has no charge row for it yet
        bill = emu.billing(iid)
        lower = compare("ghost, no charges: last sighting", cost_of(env, out["id"], "--no-provider-charges"), bill)
        emu._endpoint = original
        results.append(compare("ghost, by vast's charges", cost_of(env, out["id"]), bill))
        results.append(lower)

        env = {**base, "DEPLOY_HOME": str(tmp / "self")}  # the four 4090 offers are taken by now: a 3090
        runtime = ["provision", "--runtime", "--gpu", "3090", "--max-offers", "1", "--image", "bench/csm-runtime:x"]
        runtime += ["--model", "tiny-random", "--no-autotune", "--tunnel", "--server-port", str(free_port()), "--json"]
        out = json.loads(deploy(env, *runtime, "--idle-destroy", f"{args.idle:g}s").stdout)
        iid = int(out["provider_id"])
        state_file = emu.box(iid).home / "csm-deploy" / "watchdog.json"
        watching_since = None  # when the idle clock started: no request comes, so the limit runs out idle s later
        deadline = time.monotonic() + args.idle + 300
        while str(iid) in emu.running_ids():
            if time.monotonic() > deadline:
                raise RuntimeError("the watchdog never destroyed the box")
            watching_since = idle_clock_start(state_file) or watching_since
            time.sleep(0.2)
        if watching_since is None:
            raise RuntimeError("the watchdog's state file never showed a check")
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
        f"{'path':40} {'ours $':>10} {'vast $':>10} {'error %':>8} {'lifetime s':>10} {'running s':>10} {'GPU s short':>11}"
    )
    for r in results:
        print(
            f"{r['path']:40} {r['ours_usd']:10.6f} {r['vast_usd']:10.6f} {r['error_pct']:8.3f} "
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
