"""The delivery check: serve the chosen setting with the real server and measure what a client gets over HTTP.

A profile states what `serve --profile` delivers. So after the sweep, autotune runs `csm-runtime serve --profile
PATH` on the profile it is about to write, in a process (group) of its own on a free loopback port, as a box runs it
(server_process.py). The sweep's weights are dropped first, so a GPU holds one copy. For `check_rounds` rounds it
opens `streams - 1` streaming requests, waits until each is receiving audio, then sends the probe request and reads
it with a plain HTTP client (http.client, streamed). Measured on the client side:

- TTFA: request sent -> first audio byte of the probe (predicted: the chosen row's TTFA for its first chunk, which
  includes the half step a request waits on average to join a busy batch);
- RTF: the probe's (last byte - first byte) / the audio that came after its first read (predicted: the chosen row's
  RTF, i.e. one frame step for `streams` streams / 80 ms).

Timing is noisy on a shared machine, so the check measures again (`check_attempts` attempts at most; once it has
measured `check_budget_s`, no new attempt starts and an attempt ends after MIN_ROUNDS rounds) while the medians differ from the prediction by more than `check_tolerance`
(TTFA also by more than `check_ttfa_slack_ms`) or the rounds' RTF disagree among themselves (spread past `spread_limit`);
the delivered figures are the medians over every round of every attempt, and they are the profile's figures whatever
the prediction said (`unsettled` says why they were still not settled when the check stopped). Only a setting that does
not serve fails the check (`ServeFailure`): the server does not start, answers an error, sends no audio, or sends
something that is not the PCM asked for.
"""

from __future__ import annotations

import http.client
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from csm_runtime.settings import RuntimeSettings
from csm_runtime.tuning.profile import Delivery, Profile
from csm_runtime.tuning.rounds import spread
from csm_runtime.tuning.server_process import ServeFailure, ServerProcess, free_port

__all__ = ["ServeFailure", "check_delivery", "compare", "measure_delivery", "steady_rtf"]

SAMPLE_RATE = 24_000
FRAME_S = 0.08


@dataclass
class Reading:
    ttfa_s: float | None = None  # request sent -> first audio byte
    first_bytes: int = 0  # bytes in the first read that carried audio
    last_s: float | None = None  # request sent -> last byte
    nbytes: int = 0
    status: int = 0
    content_type: str = ""


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
        reading.status, reading.content_type = resp.status, resp.getheader("Content-Type") or ""
        if resp.status != 200:
            raise ServeFailure(f"the server answered {resp.status}: {resp.read(300)!r}")
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
    except (OSError, http.client.HTTPException) as exc:
        raise ServeFailure(f"the request failed: {type(exc).__name__}: {exc}") from None
    finally:
        conn.close()
    return reading


def output_problem(r: Reading, frames: int) -> str | None:
    """Why the probe's body is not the PCM asked for (None when it is): 16-bit mono at 24 kHz, some audio, no more
    than the `frames` frames requested."""
    if not r.content_type.startswith("audio/pcm"):
        return f"Content-Type {r.content_type or 'missing'!r}, not audio/pcm"
    if r.nbytes == 0:
        return "no audio"
    if r.nbytes % 2:
        return f"{r.nbytes} bytes: not whole 16-bit samples"
    cap = frames * round(FRAME_S * SAMPLE_RATE) * 2
    if r.nbytes > cap:
        return f"{r.nbytes} bytes of audio for a request capped at {frames} frames ({cap} bytes)"
    return None


def steady_rtf(r: Reading) -> float | None:
    """Wall time per audio second after the first read: the server's frame rate for this stream."""
    after = (r.nbytes - r.first_bytes) / 2 / SAMPLE_RATE
    if r.ttfa_s is None or r.last_s is None or after <= 0:
        return None
    return (r.last_s - r.ttfa_s) / after


# (attempt, round, probe RTF, probe TTFA ms): each delivery round as soon as it is measured
OnRound = Callable[[int, int, float, float], None]


MIN_ROUNDS = 3  # an attempt past the check's time budget still gets this many rounds: a median needs a few


def measure_delivery(
    port: int,
    streams: int,
    plan,
    text: str,
    on_round: OnRound | None = None,
    attempt: int = 1,
    until: float | None = None,
) -> tuple[list[float], list[float]]:
    """`plan.check_rounds` rounds of (streams - 1 background requests, then the probe): per-round probe RTF and
    TTFA (ms); fewer (MIN_ROUNDS at least) once time.monotonic() passes `until`. A request that errors, or a probe
    without the audio asked for, is a ServeFailure."""
    rtfs, ttfas = [], []
    load_frames = 2 * plan.check_frames + max(plan.first_chunk_frames) + 16
    with ThreadPoolExecutor(max(1, streams - 1)) as pool:
        for n in range(1, plan.check_rounds + 1):
            if until is not None and n > MIN_ROUNDS and time.monotonic() > until:
                break
            stop = threading.Event()
            flags = [threading.Event() for _ in range(streams - 1)]
            loads = [pool.submit(speech_request, port, text, load_frames, stop, f) for f in flags]
            try:
                for flag, fut in zip(flags, loads, strict=True):
                    while not flag.wait(0.1):
                        if fut.done():
                            fut.result()  # raises what went wrong
                            break
                probe = speech_request(port, text, plan.check_frames)
            finally:
                stop.set()  # also when stopped: the background reads end at their next chunk
            for fut in loads:
                fut.result()
            problem = output_problem(probe, plan.check_frames)
            rtf = steady_rtf(probe)
            if problem is None and (probe.ttfa_s is None or rtf is None):
                problem = f"the audio came in one read ({probe.nbytes} bytes): nothing streamed after the first"
            if problem:
                raise ServeFailure(f"the probe request received wrong output: {problem}")
            rtfs.append(rtf)
            ttfas.append(probe.ttfa_s * 1000)
            if on_round is not None:
                on_round(attempt, n, rtf, probe.ttfa_s * 1000)
    return rtfs, ttfas


def compare(profile: Profile, plan, rtfs: list[float], ttfas: list[float]) -> Delivery:
    """The medians of `rtfs` and `ttfas` against the chosen row's prediction; `ok` when both are within tolerance."""
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
            f"the served setting {chosen.candidate} delivers other figures than the sweep predicted (tolerance "
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
        rtf_spread=round(spread(rtfs), 4),
        ttfa_spread=round(spread(ttfas), 4),
    )


def measure_again(delivery: Delivery, rtfs: list[float], ttfas: list[float], plan) -> str | None:
    """Why this attempt's figures are not settled (None when they are): they differ from the prediction, or its
    rounds' RTF disagree among themselves (single TTFA samples swing by half between requests on a busy CPU even
    when nothing disturbs them, so their spread alone is no reason; their median against the prediction is)."""
    if not delivery.ok:
        return delivery.reason
    if spread(rtfs) > plan.spread_limit:
        return (
            f"the rounds disagree: RTF spread {spread(rtfs):.0%} > {plan.spread_limit:.0%} "
            f"({', '.join(f'{x:.3f}' for x in rtfs)})"
        )
    return None


def go_on(again: str | None, attempt: int, spent_s: float, plan) -> tuple[str | None, str | None]:
    """(why to measure again, or None to stop; why the figures stand unsettled, or None): measure again while an
    attempt is left and the check has measured less than `check_budget_s`."""
    if again is None:
        return None, None
    if attempt >= plan.check_attempts:
        return None, f"{again}; after {attempt} attempt(s)"
    if spent_s > plan.check_budget_s:
        return None, f"{again}; not measured again: {spent_s:.0f} s measured (budget {plan.check_budget_s:g} s)"
    return again, None


@dataclass
class Hooks:
    """Who hears of the check as it goes: the server's pid once launched, each round, each attempt's Delivery and
    why it is measured again (None when settled)."""

    server: Callable[[int, int], None] = lambda pid, port: None
    round: OnRound | None = None
    attempt: Callable[[int, Delivery, str | None], None] = lambda attempt, delivery, again: None


def check_delivery(
    profile: Profile,
    profile_file: Path,
    base: RuntimeSettings,
    plan,
    *,
    ready_timeout_s=900,
    hooks: Hooks | None = None,
) -> Delivery:
    """Serve `profile_file` (already written) with `serve --profile PATH` and measure it (module docstring)."""
    hooks = hooks or Hooks()
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
    all_rtfs: list[float] = []
    all_ttfas: list[float] = []
    unsettled = None
    with tempfile.TemporaryDirectory(prefix="csm-delivery-") as workdir:
        server = ServerProcess(settings, Path(workdir))
        try:
            hooks.server(server.launch(), server.port)
            server.wait_ready(ready_timeout_s)
            began = time.monotonic()
            for attempt in range(1, plan.check_attempts + 1):
                try:
                    until = began + plan.check_budget_s
                    rtfs, ttfas = measure_delivery(server.port, streams, plan, plan.prompt, hooks.round, attempt, until)
                except ServeFailure as exc:
                    raise ServeFailure(f"{exc} (server log: {server.log_tail(3)})") from None
                all_rtfs += rtfs
                all_ttfas += ttfas
                delivery = compare(profile, plan, all_rtfs, all_ttfas)
                again = measure_again(compare(profile, plan, rtfs, ttfas), rtfs, ttfas, plan)
                again, unsettled = go_on(again, attempt, time.monotonic() - began, plan)
                hooks.attempt(attempt, delivery, again)
                if again is None:
                    break
                earlier.append(again)
            if not server.alive():
                raise ServeFailure(f"the server exited during the check: {server.log_tail(3)}")
        finally:
            server.stop()
    return delivery.model_copy(update={"attempts": attempt, "earlier": earlier, "unsettled": unsettled})
