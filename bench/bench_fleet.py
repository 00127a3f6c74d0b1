"""Fleet throughput: the same concurrent load through the gateway with 3, 2 and 1 local replicas.

Provisions a fleet of tiny-random replicas on this machine with the real CLI (`deploy provision --provider local
--replicas N`), starts the real HAProxy gateway, then for each size (largest first, shrinking with `deploy scale`,
which drains) sends `--clients` concurrent streaming requests of `--audio-ms` each, `--rounds` times. Reports audio
seconds per wall second, the scaling factor against one replica, TTFA p50/p95, and how the requests spread over the
replicas (from their /metrics). One replica reached directly (no gateway) is the baseline for the gateway's cost.
Table on stdout, JSON in bench/results/fleet.json.

    python bench/bench_fleet.py                         # 3/2/1 replicas, 6 clients x 1600 ms x 3 rounds
    python bench/bench_fleet.py --clients 12 --threads 2
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "fleet.json"
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replicas", default="3,2,1", help="fleet sizes, largest first (the fleet shrinks)")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--audio-ms", type=int, default=1600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per replica")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
