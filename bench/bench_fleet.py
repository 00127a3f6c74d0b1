"""Fleet benchmarks, two of them:

`cost` (the default): what a day of speech requests costs on three fleets, side by side: a fixed on-demand fleet
sized for the peak, the autoscaled one (the real autoscale policy, deploy/fleet/autoscale_policy.py) and the
autoscaled mixed one (K on-demand replicas, the rest interruptible). A seeded day-shaped trace (quiet night, busy
day) is replayed against a simulated fleet (bench/fleet_sim.py: no network, 1-second steps). Prices and speeds are
stated assumptions (flags), printed and written with the result. Table on stdout, JSON in
bench/results/fleet_cost.json.

    python bench/bench_fleet.py                         # the day, default assumptions (about 20 s)
    python bench/bench_fleet.py cost --preempt-per-h 0.1,1 --boot-min 10

`gateway`: the same concurrent load through the gateway with 3, 2 and 1 local replicas. Provisions a fleet of
tiny-random replicas on this machine with the real CLI (`deploy provision --provider local --replicas N`), starts the
real HAProxy gateway, then for each size (largest first, shrinking with `deploy scale`, which drains) sends
`--clients` concurrent streaming requests of `--audio-ms` each, `--rounds` times. Reports audio seconds per wall
second, the scaling factor against one replica, TTFA p50/p95, and how the requests spread over the replicas (from
their /metrics). One replica reached directly (no gateway) is the baseline for the gateway's cost. Table on stdout,
JSON in bench/results/fleet.json.

    python bench/bench_fleet.py gateway                 # 3/2/1 replicas, 6 clients x 1600 ms x 3 rounds
    python bench/bench_fleet.py gateway --clients 12 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "fleet.json"
COST_RESULTS = ROOT / "bench" / "results" / "fleet_cost.json"
sys.path.insert(0, str(ROOT))
DEPLOY = str(ROOT / ".venv" / "bin" / "deploy")


def deploy(env: dict, *args: str) -> dict | None:
    res = subprocess.run([DEPLOY, *args], env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        sys.exit(f"deploy {' '.join(args)} failed: {res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout) if "--json" in args else None


def one(url: str, token: str, audio_ms: int, i: int) -> dict:
    body = {"model": "tts-1", "voice": "alloy", "input": f"Fleet benchmark sentence {i}.", "response_format": "pcm",
            "max_audio_ms": audio_ms}  # fmt: skip
    start = time.perf_counter()
    ttfa, nbytes = None, 0
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.stream("POST", url + "/v1/audio/speech", json=body, headers=headers, timeout=600) as r:
        r.raise_for_status()
        for data in r.iter_raw():
            if data and ttfa is None:
                ttfa = time.perf_counter() - start
            nbytes += len(data)
    return {"ttfa_s": ttfa, "audio_s": nbytes / 2 / 24_000}


def load(url: str, token: str, clients: int, audio_ms: int, rounds: int) -> dict:
    start = time.perf_counter()
    rows = []
    with ThreadPoolExecutor(clients) as pool:
        for r in range(rounds):
            rows += list(pool.map(lambda i, r=r: one(url, token, audio_ms, r * clients + i), range(clients)))
    wall = time.perf_counter() - start
    audio = sum(x["audio_s"] for x in rows)
    ttfa = sorted(x["ttfa_s"] for x in rows)
    return {
        "requests": len(rows),
        "audio_s": round(audio, 2),
        "wall_s": round(wall, 2),
        "audio_s_per_wall_s": round(audio / wall, 3),
        "ttfa_p50_s": round(statistics.median(ttfa), 3),
        "ttfa_p95_s": round(ttfa[min(len(ttfa) - 1, round(0.95 * (len(ttfa) - 1)))], 3),
    }


def served(env: dict) -> dict[str, int]:
    status = deploy(env, "status", "--json") or []
    return {e["replica"]["replica"]: e["replica"]["requests"] or 0 for e in status if "replica" in e}


def gateway_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench_fleet.py gateway", description="fleet throughput through the gateway")
    ap.add_argument("--replicas", default="3,2,1", help="fleet sizes, largest first (the fleet shrinks)")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--audio-ms", type=int, default=1600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per replica")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    sizes = sorted({int(x) for x in args.replicas.split(",")}, reverse=True)
    home = Path(tempfile.mkdtemp(prefix="bench-fleet-")) / "home"
    env = {**os.environ, "DEPLOY_HOME": str(home), "DEPLOY_POLL_INTERVAL_S": "0.2", "CSM_DEVICE": "cpu",
           "CSM_CPU_THREADS": str(args.threads), "CSM_MAX_STREAMS": "4"}  # fmt: skip
    env.pop("VAST_API_KEY", None)
    port = 18000 + os.getpid() % 1000
    url = f"http://127.0.0.1:{port}"
    results: list[dict] = []
    t0 = time.perf_counter()
    deploy(env, "provision", "--provider", "local", "--model", "tiny-random", "--no-autotune",
           "--replicas", str(sizes[0]), "--json")  # fmt: skip
    provision_s = time.perf_counter() - t0
    try:
        deploy(env, "gateway", "start", "--port", str(port), "--json")
        token = (home / "tokens" / "gateway-default.token").read_text().strip()
        for n in sizes:
            if n != sizes[0]:
                deploy(env, "scale", str(n), "--json")
            one(url, token, 160, -1)  # a warm path before counting
            before = served(env)
            row = {"replicas": n, "via": "gateway", **load(url, token, args.clients, args.audio_ms, args.rounds)}
            after = served(env)
            row["per_replica"] = {k: after[k] - before.get(k, 0) for k in sorted(after)}
            results.append(row)
            print(f"{n} replicas: {row['audio_s_per_wall_s']} audio s / wall s", file=sys.stderr)
        status = deploy(env, "status", "--json") or []
        (direct,) = [e["replica"] for e in status if "replica" in e]
        direct_token = Path(
            direct["endpoint"] and (home / "tokens" / f"rental-{direct['rental_id']}.token")
        ).read_text()
        row = {"replicas": 1, "via": "direct", **load(direct["endpoint"], direct_token.strip(), args.clients,
                                                      args.audio_ms, args.rounds)}  # fmt: skip
        results.append(row)
    finally:
        subprocess.run([DEPLOY, "gateway", "stop", "--now"], env=env, capture_output=True)
        subprocess.run([DEPLOY, "teardown", "--all", "--yes"], env=env, capture_output=True)
    base = next(r for r in results if r["replicas"] == 1 and r["via"] == "gateway")["audio_s_per_wall_s"]
    for r in results:
        r["scaling_vs_1"] = round(r["audio_s_per_wall_s"] / base, 2)
    print(f"{'replicas':>8} {'via':>8} {'req':>4} {'audio s':>8} {'wall s':>7} {'audio/wall':>10} {'x vs 1':>7} "
          f"{'TTFA p50':>9} {'p95':>6}  spread")  # fmt: skip
    for r in results:
        spread = " ".join(f"{k}:{v}" for k, v in r.get("per_replica", {}).items())
        print(f"{r['replicas']:>8} {r['via']:>8} {r['requests']:>4} {r['audio_s']:>8} {r['wall_s']:>7} "
              f"{r['audio_s_per_wall_s']:>10} {r['scaling_vs_1']:>7} {r['ttfa_p50_s']:>9} {r['ttfa_p95_s']:>6}  {spread}")  # fmt: skip
    doc = {
        "bench": "fleet",
        "model": "tiny-random",
        "clients": args.clients,
        "audio_ms": args.audio_ms,
        "rounds": args.rounds,
        "cpu_threads_per_replica": args.threads,
        "provision_s": round(provision_s, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def cost_main(argv: list[str]) -> None:
    from bench.fleet_sim import Setup, day_trace, simulate, sized_for_peak
    from deploy.fleet.autoscale_policy import Policy

    ap = argparse.ArgumentParser(prog="bench_fleet.py cost", description="a day's cost: fixed, autoscaled, mixed")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--peak-rpm", type=float, default=240, help="requests per minute at the day's peak")
    ap.add_argument("--night-rpm", type=float, default=24, help="requests per minute at night")
    ap.add_argument("--noise", type=float, default=0.15, help="lognormal sigma of each minute's rate")
    ap.add_argument("--mean-audio-s", type=float, default=12.0, help="audio seconds per request, mean")
    ap.add_argument("--streams", type=int, default=4, help="streams one replica serves at once (max_streams)")
    ap.add_argument("--rtf", type=float, default=0.5, help="wall seconds per audio second at that batch")
    ap.add_argument("--boot-min", type=float, default=5.0, help="minutes from rent to serving")
    ap.add_argument("--queue-timeout-s", type=float, default=30.0, help="a queued request is refused (429) after")
    ap.add_argument("--on-demand-usd-h", type=float, default=0.35, help="an on-demand replica, USD/h")
    ap.add_argument("--bid-share", type=float, default=0.45, help="an interruptible replica's price / on-demand")
    ap.add_argument("--preempt-per-h", default="0.1,0.5", help="preemptions per interruptible replica-hour (list)")
    ap.add_argument("--min", type=int, default=1, dest="min_replicas")
    ap.add_argument("--target-streams", type=float, default=3.0)
    ap.add_argument("--on-demand-min", type=int, default=1, help="K: the mixed fleet's on-demand replicas")
    ap.add_argument("--check-s", type=int, default=15, help="the autoscale loop's interval")
    ap.add_argument("--out", type=Path, default=COST_RESULTS)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    trace = day_trace(seed=args.seed, peak_rpm=args.peak_rpm, night_rpm=args.night_rpm, noise=args.noise,
                      mean_audio_s=args.mean_audio_s)  # fmt: skip
    base = Setup("fixed", streams=args.streams, rtf=args.rtf, boot_s=args.boot_min * 60,
                 queue_timeout_s=args.queue_timeout_s, on_demand_usd_h=args.on_demand_usd_h,
                 interruptible_usd_h=args.on_demand_usd_h * args.bid_share, check_s=args.check_s, seed=args.seed)  # fmt: skip
    n_fixed, fixed = sized_for_peak(trace, base)
    fixed.name = f"fixed, {n_fixed} on-demand (sized for the peak)"
    policy = Policy(args.min_replicas, max(args.min_replicas, n_fixed), args.target_streams)
    results = [fixed]
    auto = simulate(trace, dataclasses.replace(base, name="autoscaled", policy=policy))
    results.append(auto)
    for rate in _floats(args.preempt_per_h):
        name = f"autoscaled mixed, {args.on_demand_min} on-demand + interruptible ({rate:g} preemptions/h)"
        setup = dataclasses.replace(
            base, name=name, policy=policy, on_demand_min=args.on_demand_min, preempt_per_h=rate
        )
        results.append(simulate(trace, setup))
    print_cost_table(results, fixed.usd)
    doc = {
        "bench": "fleet_cost",
        "when": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "simulated": "no network: bench/fleet_sim.py replays the trace in 1-second steps",
        "assumptions": {k: v for k, v in vars(args).items() if k != "out"}
        | {"interruptible_usd_h": round(args.on_demand_usd_h * args.bid_share, 6)},
        "policy": dataclasses.asdict(policy),
        "trace": {"requests": len(trace), "audio_h": round(sum(q.audio_s for q in trace) / 3600, 2)},
        "results": [r.as_dict() for r in results],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


def print_cost_table(results: list, fixed_usd: float) -> None:
    print(f"{'fleet':<68} {'replicas':>8} {'served':>7} {'429':>6} {'cut':>4} {'od h':>6} {'int h':>6} "
          f"{'preempt':>7} {'USD/day':>8} {'vs fixed':>8} {'USD/audio h':>11}")  # fmt: skip
    for r in results:
        per = "unknown" if r.usd_per_audio_h is None else f"{r.usd_per_audio_h:.4f}"
        size = f"{r.replicas_min}-{r.replicas_max}"
        print(f"{r.name:<68} {size:>8} {r.served:>7} {r.rejected_429:>6} {r.cut:>4} {r.on_demand_h:>6.1f} "
              f"{r.interruptible_h:>6.1f} {r.preemptions:>7} {r.usd:>8.2f} {r.usd / fixed_usd:>7.0%} {per:>11}")  # fmt: skip


def main() -> None:
    argv = sys.argv[1:]
    mode = argv.pop(0) if argv and not argv[0].startswith("-") else "cost"
    if mode == "gateway":
        gateway_main(argv)
    elif mode == "cost":
        cost_main(argv)
    else:
        sys.exit(f"bench_fleet.py: unknown mode {mode!r} (cost or gateway)")


if __name__ == "__main__":
    main()
