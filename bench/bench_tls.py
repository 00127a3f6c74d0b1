"""What TLS on a public bind costs a client: two real `csm-runtime serve` processes (tiny-random), one on loopback
(plain HTTP) and one on 0.0.0.0 (HTTPS, self-signed certificate trusted as the only anchor), asked the same things.

- new connection per request: GET /health with a fresh client each time (TCP + TLS handshake + request; the SSL
  context is built once for both, so only the connection is timed);
- kept-alive connection: GET /health on one client (the handshake paid once);
- a short speech request (pcm, 160 ms of audio) on a kept-alive client: time to the whole body.

Prints a table and writes bench/results/tls.json. The box is shared: compare the two columns, not the absolute values.

    .venv/bin/python bench/bench_tls.py [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-tls-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp: Path, host: str) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    (tmp / "token").write_text(TOKEN)
    env = {**os.environ, "CSM_DEVICE": "cpu", "CSM_CPU_THREADS": "1", "CSM_MAX_STREAMS": "1"}
    cmd = [sys.executable, "-m", "csm_runtime.cli", "serve", "--model", "tiny-random", "--host", host]
    cmd += ["--port", str(port), "--token-file", str(tmp / "token"), "--profile", "off", "--tls-dir", str(tmp / "tls")]
    log = (tmp / f"{host}.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    scheme = "http" if host == "127.0.0.1" else "https"
    return proc, f"{scheme}://127.0.0.1:{port}", tmp / "tls" / "cert.pem"


def wait_ready(url: str, verify) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url + "/ready", headers={"Authorization": f"Bearer {TOKEN}"}, verify=verify, timeout=5)
            if r.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} never became ready")


def timed(fn, runs: int) -> dict:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 3),
    }


def measure(url: str, verify, runs: int) -> dict:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    body = {"model": "tts-1", "voice": "alloy", "input": "Hi.", "response_format": "pcm", "max_audio_ms": 160}

    def fresh() -> None:
        with httpx.Client(verify=verify, timeout=10) as c:
            c.get(url + "/health").raise_for_status()

    with httpx.Client(verify=verify, timeout=60, headers=headers) as kept:
        kept.get(url + "/health")
        out = {
            "new_connection": timed(fresh, runs),
            "kept_alive": timed(lambda: kept.get(url + "/health").raise_for_status(), runs),
            "speech_160ms": timed(lambda: kept.post(url + "/v1/audio/speech", json=body).raise_for_status(), 10),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        plain_dir, tls_dir = Path(tmp) / "plain", Path(tmp) / "tls"
        plain_dir.mkdir()
        tls_dir.mkdir()
        procs = []
        try:
            plain, plain_url, _ = start(plain_dir, "127.0.0.1")
            procs.append(plain)
            tls, tls_url, cert = start(tls_dir, "0.0.0.0")
            procs.append(tls)
            default = ssl.create_default_context()  # built once, like the pinned one: a client's set-up is not measured
            wait_ready(plain_url, default)
            deadline = time.monotonic() + 60
            while not cert.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            pinned = ssl.create_default_context(cafile=str(cert))
            wait_ready(tls_url, pinned)
            results = {"plain_http": measure(plain_url, default, args.runs), "tls": measure(tls_url, pinned, args.runs)}
        finally:
            for proc in procs:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
    results["conditions"] = {
        "runs": args.runs,
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "key": "EC P-256 self-signed",
        "python": sys.version.split()[0],
    }
    print(f"{'':24} {'plain http':>18} {'tls':>18}   (median / p90 ms)")
    for name in ("new_connection", "kept_alive", "speech_160ms"):
        a, b = results["plain_http"][name], results["tls"][name]
        print(f"{name:24} {a['median_ms']:>8.2f} / {a['p90_ms']:<8.2f} {b['median_ms']:>8.2f} / {b['p90_ms']:<8.2f}")
    out = ROOT / "bench" / "results" / "tls.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
