"""One round of one candidate, and a candidate's rounds summed up as its `Measurement` (sweep.py runs them).

A round fills `batch` rows, decodes `warmup_frames` untimed then `timed_frames` timed steps (one frame per stream
per step), then frees one row and times a request joining the busy batch: its time to first audio for each
first-chunk size. The summary takes medians over the rounds, so one disturbed round cannot move a figure.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import psutil
import torch

from csm_runtime.engine.generator import StreamingGenerator
from csm_runtime.engine.types import GenerationParams
from csm_runtime.tuning.plan import Plan
from csm_runtime.tuning.profile import Measurement

FRAME_MS = 80.0


@dataclass
class RoundResult:
    step_ms: list[float]
    ttfa_ms: dict[int, float]
    prefill_ms: float
    peak_memory_mb: float
    memory_kind: str  # cuda_max_allocated (the process, during this round) | process_rss (after it)


def _peak_memory(device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return psutil.Process().memory_info().rss / 2**20, "process_rss"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def measure_round(gen: StreamingGenerator, batch: int, plan: Plan, seed: int = 0) -> RoundResult:
    """One round of one candidate on a warmed-up, idle generator (see the module docstring for the procedure)."""
    longest = max(plan.first_chunk_frames)
    frames = plan.warmup_frames + plan.timed_frames + longest + 8

    def params(i: int, n_frames: int) -> GenerationParams:
        return GenerationParams(
            max_audio_ms=int(n_frames * FRAME_MS), seed=seed + i, first_chunk_frames=1, chunk_frames=1
        )

    gen.resize_codec(batch)  # Mimi decodes as many slots as a server with max_streams = batch
    if gen.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(gen.device)
    sids = [gen.add_stream(plan.prompt, 0, (), params(i, frames)) for i in range(batch)]
    for _ in range(plan.warmup_frames):
        gen.step()
    step_ms = []
    for _ in range(plan.timed_frames):
        t0 = time.perf_counter()
        gen.step()  # ends with a device->host copy of the codes and PCM, so the time includes the GPU work
        step_ms.append((time.perf_counter() - t0) * 1000)
    # A request joining the busy batch: prefill into the freed row, then frames until each first-chunk size is out.
    gen.cancel(sids[0])
    t0 = time.perf_counter()
    probe = gen.add_stream(plan.prompt, 0, (), params(10_000, longest + 2))
    prefill_ms = (time.perf_counter() - t0) * 1000
    ttfa: dict[int, float] = {}
    for _ in range(longest + 4):
        finished = False
        for ev in gen.step():
            if ev.stream_id != probe:
                continue
            if ev.chunk is not None and ev.chunk.metrics.frames_total in plan.first_chunk_frames:
                ttfa[ev.chunk.metrics.frames_total] = ev.chunk.metrics.elapsed_s * 1000
            finished = finished or ev.finished
        if finished or len(ttfa) == len(plan.first_chunk_frames):
            break
    for sid in [*sids[1:], probe]:
        gen.cancel(sid)
    gen.step()  # flush the cancellations
    return RoundResult(step_ms, ttfa, prefill_ms, *_peak_memory(gen.device))


def spread(values: list[float]) -> float:
    """(largest - smallest) / median: how far apart rounds of one measurement are (0 for fewer than two)."""
    if len(values) < 2:
        return 0.0
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle > 0 else 0.0


def summarize(rounds: list[RoundResult], batch: int, warm: dict, extra_rounds: int = 0) -> Measurement:
    """A candidate's rounds -> its Measurement: RTF and TTFA from the rounds' medians (one disturbed round cannot
    move them), the spread between rounds, p50/p95 over every timed frame."""
    frames = [ms for r in rounds for ms in r.step_ms]
    round_means = [statistics.fmean(r.step_ms) for r in rounds]
    typical = statistics.median(round_means)
    wait = typical / 2 if batch > 1 else 0.0  # an idle server admits at once; a busy one between two steps
    ttfa = {
        k: round(statistics.median([r.ttfa_ms[k] for r in rounds if k in r.ttfa_ms]) + wait, 2)
        for k in sorted({k for r in rounds for k in r.ttfa_ms})
    }
    return Measurement(
        frames_timed=len(frames),
        ms_per_frame_p50=round(statistics.median(frames), 3),
        ms_per_frame_p95=round(_percentile(frames, 0.95), 3),
        ms_per_frame_mean=round(statistics.fmean(frames), 3),
        rtf=round(typical / FRAME_MS, 4),
        ttfa_ms=ttfa,
        prefill_ms=round(statistics.median(r.prefill_ms for r in rounds), 2),
        peak_memory_mb=round(max(r.peak_memory_mb for r in rounds), 1),
        memory_kind=rounds[0].memory_kind,
        compile_s=float(warm.get("compile_s") or 0.0),
        warmup_s=float(warm.get("warmup_s") or 0.0),
        cuda_graphs_active=bool(warm.get("cuda_graphs")),
        rounds=len(rounds),
        round_ms_per_frame=[round(m, 3) for m in round_means],
        spread=round(spread(round_means), 4),
        extra_rounds=extra_rounds,
        admission_wait_ms=round(wait, 2),
    )


def measure(gen: StreamingGenerator, batch: int, plan: Plan) -> Measurement:
    """Warm up one generator and time one candidate alone (`plan.rounds` rounds back to back): for benchmarks."""
    warm = gen.warmup()
    return summarize([measure_round(gen, batch, plan, seed=i * 100) for i in range(plan.rounds)], batch, warm)
