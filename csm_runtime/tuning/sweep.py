"""The sweep behind a profile: measure each candidate of a plan (plan.py) on this device, every row in the table.

For each setting (everything but the batch) the batch grows 1, 2, 4, ... until a batch runs out of memory or passes
real time (RTF > `stop_rtf`); larger ones are recorded as skipped with that reason. Settings the device cannot run are
recorded as skipped too (`setting_skip_reason`).

Each measured candidate: build a generator with `max_streams = batch` (GeneratorFactory: the weights load once per
dtype), warm it up (compile + graph capture, timed), fill every slot, decode `warmup_frames` untimed then
`timed_frames` timed steps (one frame per stream per step), then free one slot and time a request joining the busy
batch: its time to first audio for each first-chunk size. The rule that picks among the rows is choice.py.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
import torch

from csm_runtime.engine.generator import StreamingGenerator
from csm_runtime.engine.loader import GeneratorFactory
from csm_runtime.engine.types import GenerationParams
from csm_runtime.settings import RuntimeSettings
from csm_runtime.tuning.identity import DeviceFacts, detect_device
from csm_runtime.tuning.plan import Plan, candidate_id, planned_settings, setting_skip_reason
from csm_runtime.tuning.profile import Candidate, Measurement

FRAME_MS = 80.0


def release_memory(device) -> None:
    """Drop compiled graphs and cached blocks between candidates, so one candidate's memory is not the next's."""
    torch._dynamo.reset()  # compiled code is per generator; stale entries would also hit the recompile limit
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


# --- measuring one candidate --------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def measure(gen: StreamingGenerator, batch: int, plan: Plan) -> Measurement:
    """Time one warmed-up generator with `batch` busy slots (see the module docstring for the procedure)."""
    warm = gen.warmup()
    longest = max(plan.first_chunk_frames)
    frames = plan.warmup_frames + plan.timed_frames + longest + 8

    def params(seed: int, n_frames: int) -> GenerationParams:
        return GenerationParams(max_audio_ms=int(n_frames * FRAME_MS), seed=seed, first_chunk_frames=1, chunk_frames=1)

    sids = [gen.add_stream(plan.prompt, 0, (), params(i, frames)) for i in range(batch)]
    for _ in range(plan.warmup_frames):
        gen.step()
    step_ms = []
    for _ in range(plan.timed_frames):
        t0 = time.perf_counter()
        gen.step()  # ends with a device->host copy of the codes and PCM, so the time includes the GPU work
        step_ms.append((time.perf_counter() - t0) * 1000)
    # A request joining the busy batch: prefill into a freed slot, then frames until each first-chunk size is out.
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
                ttfa[ev.chunk.metrics.frames_total] = round(ev.chunk.metrics.elapsed_s * 1000, 2)
            finished = finished or ev.finished
        if finished or len(ttfa) == len(plan.first_chunk_frames):
            break
    for sid in [*sids[1:], probe]:
        gen.cancel(sid)
    gen.step()  # flush the cancellations
    if gen.device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(gen.device) / 2**20, "cuda_max_allocated"
    else:
        peak, kind = psutil.Process().memory_info().rss / 2**20, "process_rss"
    mean = statistics.fmean(step_ms)
    return Measurement(
        frames_timed=len(step_ms),
        ms_per_frame_p50=round(statistics.median(step_ms), 3),
        ms_per_frame_p95=round(_percentile(step_ms, 0.95), 3),
        ms_per_frame_mean=round(mean, 3),
        rtf=round(mean / FRAME_MS, 4),
        ttfa_ms=ttfa,
        prefill_ms=round(prefill_ms, 2),
        peak_memory_mb=round(peak, 1),
        memory_kind=kind,
        compile_s=float(warm.get("compile_s") or 0.0),
        warmup_s=float(warm.get("warmup_s") or 0.0),
        cuda_graphs_active=bool(warm.get("cuda_graphs")),
    )


# --- the sweep ----------------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    candidates: list[Candidate]
    duration_s: float
    facts: DeviceFacts
    settings: RuntimeSettings
    plan: Plan
    notes: list[str] = field(default_factory=list)


# (phase 'start' | 'done', rows done, total rows, candidate id, the row once done)
Progress = Callable[[str, int, int, str, Candidate | None], None]


def run_sweep(
    base: RuntimeSettings, plan: Plan, *, progress: Progress | None = None, factory: GeneratorFactory | None = None
) -> SweepResult:
    """Measure every candidate of `plan` for `base.model` on `base.device`; every row ends up in the table."""
    started = time.perf_counter()
    facts = detect_device(base.device)
    factory = factory or GeneratorFactory(base)
    kind = factory.device.type
    settings_list = planned_settings(plan)
    total = len(settings_list) * len(plan.batches)
    rows: list[Candidate] = []
    report = progress or (lambda *_: None)
    for dtype, mode, graphs in settings_list:
        skip = setting_skip_reason(dtype, mode, graphs, kind)
        stop: str | None = None
        for batch in plan.batches:
            cid = candidate_id(dtype, mode, graphs, batch)
            report("start", len(rows), total, cid, None)
            common = {"id": cid, "dtype": dtype, "compile": mode, "cuda_graphs": graphs, "batch": batch}
            if skip or stop:
                row = Candidate(**common, status="skipped", reason=skip or stop)
            else:
                row, stop = _measure_one(factory, base, plan, common)
            rows.append(row)
            report("done", len(rows), total, cid, row)
    release_memory(factory.device)
    return SweepResult(rows, round(time.perf_counter() - started, 1), facts, base, plan)


def _measure_one(
    factory: GeneratorFactory, base: RuntimeSettings, plan: Plan, common: dict
) -> tuple[Candidate, str | None]:
    """One candidate -> (its row, the reason to stop growing this setting's batch or None)."""
    batch = common["batch"]
    settings = base.replace(
        dtype=common["dtype"],
        compile=common["compile"],
        cuda_graphs=common["cuda_graphs"],
        max_streams=batch,
        first_chunk_frames=min(plan.first_chunk_frames),
    )
    gen = None
    release_memory(factory.device)
    try:
        gen = factory.build(settings)
        m = measure(gen, batch, plan)
    except Exception as exc:  # one candidate failing (OOM, a compile error) must not end the sweep
        if is_oom(exc):
            return Candidate(**common, status="oom", reason=f"out of memory: {_one_line(exc)}"), (
                f"batch {batch} ran out of memory"
            )
        return Candidate(**common, status="failed", reason=f"{type(exc).__name__}: {_one_line(exc)}"), (
            f"batch {batch} failed"
        )
    finally:
        if gen is not None:
            gen.close()  # the next candidate's codec reuses the factory's Mimi
        del gen
    stop = None
    if m.rtf > plan.stop_rtf:
        stop = f"batch {batch} is already slower than real time (RTF {m.rtf:.2f} > {plan.stop_rtf:g})"
    return Candidate(**common, status="measured", measurement=m), stop


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
