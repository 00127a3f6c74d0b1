"""Soak: N concurrent clients for M minutes against a real `csm-runtime serve` process, mixed formats, some hanging up
early; requests, errors, 429s, TTFB p50/p95 and the server's RSS over time.

The server runs as its own process (tiny-random on CPU by default, loopback only), so its RSS is its own. Each client
loops until the time is up: a request in the next format of the mix (pcm, wav, mp3, opus, flac, sse), one in five
hung up after the first bytes, one in four a two-sentence text (the long-text path). An error is a status other than
200/429, a transport error, or a complete response without audio. RSS growth compares the mean of the last three
samples with the mean of the first three after warm-up (the first quarter of the run). Goal: 0 errors, growth <= 5 %.
Bounded: at most 64 clients and 30 minutes; it stops by itself. Table on stdout, JSON in bench/results/soak.json.

    python bench/bench_soak.py                       # 8 clients x 2 minutes
    python bench/bench_soak.py --clients 16 --minutes 5
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
import threading
import time
from pathlib import Path

import httpx
import psutil

RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"
FORMATS = ("pcm", "wav", "mp3", "opus", "flac", "sse")
TOKEN = "soak-token-0123456789abcdef"
SHOWN = ("errors", "busy_429", "hung_up_early", "ttfb_p50_s", "ttfb_p95_s", "rss_after_warmup_mb", "rss_end_mb")
SHOWN += ("rss_growth_pct", "load_average_before", "load_average_after")
TEXTS = ("Soak test sentence number {i}.", "First sentence of request {i}. And a second one, right after it.")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.errors = self.busy = self.hung_up = 0
        self.ttfb: list[float] = []
        self.error_samples: list[str] = []

    def error(self, text: str) -> None:
        with self.lock:
            self.errors += 1
            if len(self.error_samples) < 10:
                self.error_samples.append(text[:300])


def client(url: str, index: int, deadline: float, audio_ms: int, tally: Tally) -> None:
    n = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as http:
        while time.monotonic() < deadline:
            n += 1
            i = index * 100_000 + n
            fmt = FORMATS[(index + n) % len(FORMATS)]
            body = {
                "model": "tts-1",
                "voice": "alloy",
                "input": TEXTS[1 if n % 4 == 0 else 0].format(i=i),
                "max_audio_ms": audio_ms,
            }
            body |= {"response_format": "mp3", "stream_format": "sse"} if fmt == "sse" else {"response_format": fmt}
            hang_up = n % 5 == 0
            start = time.perf_counter()
            try:
                with http.stream("POST", "/v1/audio/speech", json=body) as r:
                    if r.status_code == 429:
                        with tally.lock:
                            tally.busy += 1
                        time.sleep(min(5.0, float(r.headers.get("retry-after", "1"))))
                        continue
                    if r.status_code != 200:
                        tally.error(f"{r.status_code}: {r.read()[:200]!r}")
                        continue
                    size, first = 0, None
                    for data in r.iter_raw():
                        if data and first is None:
                            first = time.perf_counter() - start
                            if hang_up:
                                break
                        size += len(data)
                with tally.lock:
                    tally.requests += 1
                    if first is not None:
                        tally.ttfb.append(first)
                    tally.hung_up += hang_up
                if first is None or (not hang_up and size == 0):
                    tally.error(f"{fmt}: a complete response without audio")
            except httpx.HTTPError as exc:
                tally.error(f"{fmt}: {type(exc).__name__}: {exc}")


def start_server(port: int, args, workdir: Path) -> subprocess.Popen:
    token_file = workdir / "token"
    token_file.write_text(TOKEN)
    env = {**os.environ, "CSM_CPU_THREADS": str(args.cpu_threads), "CSM_DEVICE": args.device}
    cmd = [sys.executable, "-m", "csm_runtime.cli", "serve", "--model", args.model, "--port", str(port)]
    cmd += ["--token-file", str(token_file), "--profile", "off", "--max-streams", str(args.max_streams)]
    cmd += ["--queue-size", str(args.queue_size)]
    env["CSM_MAX_AUDIO_MS"] = str(args.audio_ms)
    log = (workdir / "serve.log").open("w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/ready", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not get ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--audio-ms", type=int, default=800, help="audio per request (random weights never stop early)")
    ap.add_argument("--max-streams", type=int, default=4)
    ap.add_argument("--queue-size", type=int, default=16)
    ap.add_argument("--cpu-threads", type=int, default=1)
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling interval")
    args = ap.parse_args()
    if not 1 <= args.clients <= 64 or not 0 < args.minutes <= 30:
        raise SystemExit("--clients must be 1..64 and --minutes 0..30")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_server(port, args, Path(tmp))
        try:
            wait_ready(url, proc)
            server = psutil.Process(proc.pid)
            tally = Tally()
            t0 = time.monotonic()
            deadline = t0 + args.minutes * 60
            threads = []
            for i in range(args.clients):
                threads.append(threading.Thread(target=client, args=(url, i, deadline, args.audio_ms, tally)))
                threads[-1].start()
            rss: list[tuple[float, float]] = []
            while time.monotonic() < deadline:
                rss.append((round(time.monotonic() - t0, 1), round(server.memory_info().rss / 2**20, 1)))
                time.sleep(args.sample_s)
            for t in threads:
                t.join(180)
            rss.append((round(time.monotonic() - t0, 1), round(server.memory_info().rss / 2**20, 1)))
            wall = time.monotonic() - t0
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    warm = [mb for t, mb in rss if t >= wall / 4] or [mb for _, mb in rss]
    start_mb, end_mb = statistics.mean(warm[:3]), statistics.mean(warm[-3:])
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": platform.node(),
        "model": args.model,
        "device": args.device,
        "clients": args.clients,
        "minutes": args.minutes,
        "audio_ms": args.audio_ms,
        "max_streams": args.max_streams,
        "wall_s": round(wall, 1),
        "requests": tally.requests,
        "errors": tally.errors,
        "busy_429": tally.busy,
        "hung_up_early": tally.hung_up,
        "ttfb_p50_s": round(pct(tally.ttfb, 0.5) or 0, 3),
        "ttfb_p95_s": round(pct(tally.ttfb, 0.95) or 0, 3),
        "rss_mb": rss,
        "rss_after_warmup_mb": round(start_mb, 1),
        "rss_end_mb": round(end_mb, 1),
        "rss_growth_pct": round(100 * (end_mb - start_mb) / start_mb, 2),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "error_samples": tally.error_samples,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'requests':<22}{result['requests']}")
    for key in SHOWN:
        print(f"{key:<22}{result[key]}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
