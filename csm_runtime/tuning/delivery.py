"""The delivery check: serve the chosen setting with the real server and measure what a client gets over HTTP.

A profile is only worth applying if it predicts what `serve --profile` then delivers. So after the sweep, autotune
runs `csm-runtime serve --profile PATH` on the profile it is about to write, in a process of its own on a free
loopback port, as a box runs it: a server sharing the sweep's interpreter with the client's threads takes turns with
them on one GIL and delivers half its speed (tiny-random on 2 CPU cores). The sweep's weights are dropped first, so a
GPU holds one copy. For `rounds` rounds it opens `streams - 1` streaming requests, waits until each is receiving
audio, then sends the probe request and reads it with a plain HTTP client (http.client, streamed). Measured on the
client side:

- TTFA: request sent -> first audio byte of the probe (predicted: the chosen row's TTFA for its first chunk, which
  includes the half step a request waits on average to join a busy batch);
- RTF: the probe's (last byte - first byte) / the audio that came after its first chunk (predicted: the chosen row's
  RTF, i.e. one frame step for `streams` streams / 80 ms).

Medians over the rounds are compared with the prediction; when either differs by more than `tolerance` (25 %; TTFA
also by more than `ttfa_slack_ms`, the loopback request and response head the sweep cannot see) the attempt misses.
A missed attempt is run once more, since a burst of load on a shared machine can disturb a few seconds of timing;
when that one misses too, autotune fails loudly naming both numbers. A real mismatch misses every time, so the retry
never hides one; both attempts are recorded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from csm_runtime.settings import RuntimeSettings
from csm_runtime.tuning.profile import Delivery, Profile

SAMPLE_RATE = 24_000
FRAME_S = 0.08


class DeliveryMismatch(RuntimeError):
    """The server delivered something other than what the profile predicts; the message says both."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reading:
    ttfa_s: float | None = None  # request sent -> first audio byte
    first_bytes: int = 0  # bytes in the first read that carried audio
    last_s: float | None = None  # request sent -> last byte
    nbytes: int = 0
    status: int = 0


def speech_request(
    port: int, text: str, frames: int, stop: threading.Event | None = None, started: threading.Event | None = None
) -> Reading:
    """POST /v1/audio/speech (PCM, streamed) and time the bytes as they come. `stop` ends the read early (the server
    cancels the stream when the client goes away); `started` is set at the first audio byte."""
    body = json.dumps(
        {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm", "max_audio_ms": frames * 80}
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    reading = Reading()
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/v1/audio/speech", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        reading.status = resp.status
        if resp.status != 200:
            raise DeliveryMismatch(f"the server answered {resp.status}: {resp.read(300)!r}")
        while True:
            data = resp.read1(65536)
            if not data:
                break
            now = time.perf_counter() - t0
            if reading.ttfa_s is None:
                reading.ttfa_s, reading.first_bytes = now, len(data)
                if started is not None:
                    started.set()
            reading.nbytes += len(data)
            reading.last_s = now
            if stop is not None and stop.is_set():
                break
    finally:
        conn.close()
    return reading


def steady_rtf(r: Reading) -> float | None:
    """Wall time per audio second after the first read: the server's frame rate for this stream."""
    after = (r.nbytes - r.first_bytes) / 2 / SAMPLE_RATE
    if r.ttfa_s is None or r.last_s is None or after <= 0:
        return None
    return (r.last_s - r.ttfa_s) / after


class ServerProcess:
    """`csm-runtime serve` with `settings` (a 0600 YAML file in `workdir`) in its own process group, until
    `stop()`; its output goes to `workdir`/server.log, whose tail a failure quotes."""

    def __init__(self, settings: RuntimeSettings, workdir: Path) -> None:
        import yaml

        self.port = settings.port
        self.log_path = workdir / "server.log"
        config = workdir / "settings.yaml"
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.as_dict().items() if v is not None}
        config.touch(mode=0o600)
        config.write_text(yaml.safe_dump(values, sort_keys=False))
        self.command = [sys.executable, "-m", "csm_runtime", "serve", "--config", str(config)]
        self.proc: subprocess.Popen | None = None

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "no log"

    def start(self, timeout_s: float) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DeliveryMismatch(f"the server exited ({self.proc.returncode}) while starting: {self.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/ready")
                resp = conn.getresponse()
                text = resp.read().decode(errors="replace")
                conn.close()
                if resp.status == 200:
                    return
                last = text[:200]
                if '"failed"' in text:
                    raise DeliveryMismatch(f"the server failed to load the chosen setting: {last}")
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise DeliveryMismatch(f"the server was not ready after {timeout_s:.0f} s ({last})")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def measure_delivery(port: int, streams: int, plan, text: str) -> tuple[list[float], list[float]]:
    """`plan.check_rounds` rounds of (streams - 1 background requests, then the probe): per-round probe RTF and
    TTFA (ms)."""
    rtfs, ttfas = [], []
    load_frames = 2 * plan.check_frames + max(plan.first_chunk_frames) + 16
    with ThreadPoolExecutor(max(1, streams - 1)) as pool:
        for _ in range(plan.check_rounds):
            stop = threading.Event()
            flags = [threading.Event() for _ in range(streams - 1)]
            loads = [pool.submit(speech_request, port, text, load_frames, stop, f) for f in flags]
            for flag, fut in zip(flags, loads, strict=True):
                while not flag.wait(0.1):
                    if fut.done():
                        fut.result()  # raises what went wrong
                        break
            probe = speech_request(port, text, plan.check_frames)
            stop.set()
            for fut in loads:
                fut.result()
            rtf = steady_rtf(probe)
            if probe.ttfa_s is None or rtf is None:
                raise DeliveryMismatch(f"the probe request received no audio ({probe.nbytes} bytes)")
            rtfs.append(rtf)
            ttfas.append(probe.ttfa_s * 1000)
    return rtfs, ttfas


def compare(profile: Profile, plan, rtfs: list[float], ttfas: list[float]) -> Delivery:
    chosen = profile.chosen
    fc = chosen.settings.first_chunk_frames
    predicted_rtf = chosen.measurement.rtf
    predicted_ttfa = chosen.measurement.ttfa_ms[fc]
    rtf, ttfa = statistics.median(rtfs), statistics.median(ttfas)
    rtf_err, ttfa_err = rtf / predicted_rtf - 1, ttfa / predicted_ttfa - 1
    problems = []
    if abs(rtf_err) > plan.check_tolerance:
        problems.append(f"RTF predicted {predicted_rtf:.3f}, delivered {rtf:.3f} ({rtf_err:+.0%})")
    if abs(ttfa_err) > plan.check_tolerance and abs(ttfa - predicted_ttfa) > plan.check_ttfa_slack_ms:
        problems.append(f"TTFA predicted {predicted_ttfa:.0f} ms, delivered {ttfa:.0f} ms ({ttfa_err:+.0%})")
    reason = None
    if problems:
        reason = (
            f"the served setting {chosen.candidate} does not deliver what the profile predicts (tolerance "
            f"{plan.check_tolerance:.0%}, {chosen.settings.max_streams} stream(s), median of {len(rtfs)} rounds): "
            + "; ".join(problems)
        )
    return Delivery(
        ok=not problems,
        tolerance=plan.check_tolerance,
        streams=chosen.settings.max_streams,
        rounds=len(rtfs),
        frames_per_request=plan.check_frames,
        first_chunk_frames=fc,
        predicted_rtf=predicted_rtf,
        delivered_rtf=round(rtf, 4),
        rtf_error=round(rtf_err, 4),
        predicted_ttfa_ms=predicted_ttfa,
        delivered_ttfa_ms=round(ttfa, 2),
        ttfa_error=round(ttfa_err, 4),
        ttfa_slack_ms=plan.check_ttfa_slack_ms,
        round_rtf=[round(x, 4) for x in rtfs],
        round_ttfa_ms=[round(x, 2) for x in ttfas],
        reason=reason,
    )


def check_delivery(
    profile: Profile, profile_file: Path, base: RuntimeSettings, plan, *, ready_timeout_s=900
) -> Delivery:
    """Serve `profile_file` (already written) with `serve --profile PATH` and compare (module docstring)."""
    streams = profile.chosen.settings.max_streams
    settings = base.replace(
        host="127.0.0.1",
        port=free_port(),
        token_file=None,
        profile=str(Path(profile_file).resolve()),
        queue_size=max(base.queue_size, streams),
        max_audio_ms=max(base.max_audio_ms, (2 * plan.check_frames + max(plan.first_chunk_frames) + 16) * 80),
        shutdown_grace_s=5.0,
    )
    earlier: list[str] = []
    with tempfile.TemporaryDirectory(prefix="csm-delivery-") as workdir:
        server = ServerProcess(settings, Path(workdir))
        try:
            server.start(ready_timeout_s)
            for attempt in range(1, plan.check_attempts + 1):
                rtfs, ttfas = measure_delivery(server.port, streams, plan, plan.prompt)
                delivery = compare(profile, plan, rtfs, ttfas)
                if delivery.ok or attempt == plan.check_attempts:
                    break
                earlier.append(delivery.reason or "")
        finally:
            server.stop()
    return delivery.model_copy(update={"attempts": attempt, "earlier": earlier})
