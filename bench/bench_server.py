"""Server throughput: N concurrent clients vs the same N requests one after another, against a real server.

Starts uvicorn in this process (real sockets, the real StreamingGenerator), then for each N in --clients sends N
identical-length requests sequentially and concurrently over httpx streaming. Reports audio seconds produced per wall
second, the speed-up of concurrent over sequential, and client-side TTFA p50/p95. Table on stdout, JSON in
bench/results/server.json.

    python bench/bench_server.py                              # tiny-random, 1/4/8 clients
    python bench/bench_server.py --model csm-1b-random --audio-ms 800 --clients 1,8
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn

from csm_runtime.server import create_app
from csm_runtime.settings import RuntimeSettings

RESULTS = Path(__file__).resolve().parent / "results" / "server.json"


def one_request(url: str, audio_ms: int, i: int) -> dict:
    body = {"model": "tts-1", "voice": "alloy", "input": f"Benchmark sentence number {i}.", "response_format": "pcm",
            "max_audio_ms": audio_ms}  # fmt: skip
    start = time.perf_counter()
    ttfa, nbytes = None, 0
    with httpx.stream("POST", url + "/v1/audio/speech", json=body, timeout=600) as r:
        r.raise_for_status()
        for data in r.iter_raw():
            if data and ttfa is None:
                ttfa = time.perf_counter() - start
            nbytes += len(data)
    return {"ttfa_s": ttfa, "wall_s": time.perf_counter() - start, "audio_s": nbytes / 2 / 24_000}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def run(url: str, n: int, audio_ms: int, concurrent: bool) -> dict:
    start = time.perf_counter()
    if concurrent:
        with ThreadPoolExecutor(n) as pool:
            rows = list(pool.map(lambda i: one_request(url, audio_ms, i), range(n)))
    else:
        rows = [one_request(url, audio_ms, i) for i in range(n)]
    wall = time.perf_counter() - start
    audio = sum(r["audio_s"] for r in rows)
    ttfa = [r["ttfa_s"] for r in rows]
    return {"clients": n, "mode": "concurrent" if concurrent else "sequential", "wall_s": round(wall, 3),
            "audio_s": round(audio, 3), "audio_per_wall": round(audio / wall, 3),
            "ttfa_p50_s": round(statistics.median(ttfa), 3), "ttfa_p95_s": round(pct(ttfa, 0.95), 3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--audio-ms", type=int, default=480, help="audio per request (random weights never stop early)")
    ap.add_argument("--max-streams", type=int, default=8)
    ap.add_argument("--cpu-threads", type=int, default=1, help="torch threads (1: no oversubscription on a shared box)")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    settings = RuntimeSettings(model=args.model, device=args.device, max_streams=args.max_streams,
                               cpu_threads=args.cpu_threads, queue_size=max(clients), max_audio_ms=args.audio_ms,
                               port=args.port)  # fmt: skip
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=args.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{args.port}"
    t0 = time.perf_counter()
    while True:
        try:
            ready = httpx.get(url + "/ready")
            if ready.status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    load_s = time.perf_counter() - t0
    rows = []
    for n in clients:
        seq, conc = run(url, n, args.audio_ms, False), run(url, n, args.audio_ms, True)
        conc["speedup_vs_sequential"] = round(conc["audio_per_wall"] / seq["audio_per_wall"], 2)
        rows += [seq, conc]
        print(f"  {n} clients: sequential {seq['audio_per_wall']} audio s/wall s, concurrent {conc['audio_per_wall']}",
              flush=True)  # fmt: skip
    server.should_exit = True
    thread.join(30)

    print(f"\nserver bench: {args.model} on {args.device}, {args.audio_ms} ms audio per request, "
          f"max_streams {args.max_streams} (load+warm-up {load_s:.1f} s)")  # fmt: skip
    print(f"{'clients':>7} {'mode':>10} {'wall s':>7} {'audio s':>7} {'audio/wall':>10} {'speedup':>7} "
          f"{'TTFA p50':>8} {'TTFA p95':>8}")  # fmt: skip
    for r in rows:
        sp = r.get("speedup_vs_sequential", "")
        print(f"{r['clients']:>7} {r['mode']:>10} {r['wall_s']:>7.2f} {r['audio_s']:>7.2f} {r['audio_per_wall']:>10.2f} "
              f"{sp!s:>7} {r['ttfa_p50_s']:>8.3f} {r['ttfa_p95_s']:>8.3f}")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    existing[args.model] = {"device": args.device, "audio_ms": args.audio_ms, "max_streams": args.max_streams,
                            "host": platform.node(), "cpu_count": __import__("os").cpu_count(),
                            "load_warmup_s": round(load_s, 1), "ready": ready.json(), "rows": rows}  # fmt: skip
    RESULTS.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
