"""The sweep behind a profile: measure each candidate setting on this device, then choose by one stated rule.

A candidate is (dtype, compile mode, CUDA graphs, batch). For each setting (everything but the batch) the batch
grows 1, 2, 4, ... until a batch runs out of memory or passes real time (RTF > `stop_rtf`); larger ones are recorded
as skipped with that reason. Settings the device cannot run (CUDA graphs on CPU, a graph capture a compile mode
already does) are recorded as skipped, never measured with something else and never faked.

Each measured candidate: build a generator with `max_streams = batch`, warm it up (compile + graph capture, timed),
fill every slot, decode `warmup_frames` untimed then `timed_frames` timed steps (one frame per stream per step), then
free one slot and time a request joining the busy batch: its time to first audio for each first-chunk size.

The rule (`choose`): the most concurrent streams that stay real time with headroom (RTF <= rtf_max) with TTFA within
the target; ties go to the setting with the lowest single-stream latency (its batch-1 ms/frame). The first chunk is
the largest that still meets the TTFA target (more audio buffered against network jitter). When nothing qualifies the
fastest single stream is kept, marked `realtime: false`, so a server still starts and says why.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from csm_runtime.engine.loader import GeneratorFactory

from .identity import DeviceFacts, detect_device, package_versions
from .profile import (
    SCHEMA_VERSION,
    Candidate,
    Choice,
    ChosenSettings,
    DeviceIdentity,
    Identity,
    Measurement,
    ModelIdentity,
    Profile,
    Rule,
    SweepInfo,
    Versions,
)
from .settings import RuntimeSettings

FRAME_MS = 80.0
PROMPT = "The quick brown fox jumps over the lazy dog, then takes a short nap in the afternoon sun."
GRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")  # these capture CUDA graphs themselves


class AutotuneError(RuntimeError):
    """The sweep could not produce a profile (nothing measurable); the message lists why per candidate."""


@dataclass(frozen=True)
class Plan:
    """What to sweep. `default_plan` gives the full and quick plans per device kind."""

    dtypes: tuple[str, ...]
    compile_modes: tuple[str, ...]
    cuda_graphs: tuple[bool, ...]
    batches: tuple[int, ...]
    first_chunk_frames: tuple[int, ...]
    warmup_frames: int
    timed_frames: int
    quick: bool = False
    stop_rtf: float = 1.0  # stop growing a setting's batch once RTF passes this
    rtf_max: float = 0.8
    ttfa_target_ms: float = 500.0
    prompt: str = PROMPT


def default_plan(device_kind: str, quick: bool = False, **changes) -> Plan:
    """Full: every compile mode, graphs on/off, batch up to 32. Quick: compile off vs default, batch up to 4.

    dtype: bf16 is the GPU default and float32 its reference; on CPU float32 is the default (bf16 matmuls are slow
    on most CPUs) and bf16 is measured only in the full sweep."""
    gpu = device_kind == "cuda"
    if quick:
        plan = Plan(
            dtypes=("bfloat16",) if gpu else ("float32",),
            compile_modes=("off", "default"),
            cuda_graphs=(False, True),
            batches=(1, 2, 4),
            first_chunk_frames=(1, 2),
            warmup_frames=2 if not gpu else 4,
            timed_frames=4 if not gpu else 16,
            quick=True,
        )
    else:
        plan = Plan(
            dtypes=("bfloat16", "float32") if gpu else ("float32", "bfloat16"),
            compile_modes=("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs"),
            cuda_graphs=(False, True),
            batches=(1, 2, 4, 8, 16, 32),
            first_chunk_frames=(1, 2, 4),
            warmup_frames=8,
            timed_frames=32,
        )
    return Plan(**{**plan.__dict__, **changes})


def setting_skip_reason(dtype: str, compile_mode: str, cuda_graphs: bool, device_kind: str) -> str | None:
    """Why a setting cannot (or need not) be measured on this device; None when it can."""
    if cuda_graphs and device_kind != "cuda":
        return f"CUDA graphs need a CUDA device; this is {device_kind}"
    if cuda_graphs and compile_mode in GRAPH_COMPILE_MODES:
        return f"compile mode {compile_mode} captures CUDA graphs itself: same as its graphs-off row"
    if dtype == "float16" and device_kind != "cuda":
        return "float16 is a GPU dtype; CPU matmuls in float16 are emulated"
    return None


def candidate_id(dtype: str, compile_mode: str, cuda_graphs: bool, batch: int) -> str:
    return f"{dtype}/{compile_mode}/{'graphs' if cuda_graphs else 'no-graphs'}/b{batch}"


def release_memory(device) -> None:
    """Drop compiled graphs and cached blocks between candidates, so one candidate's memory is not the next's."""
    import torch

    torch._dynamo.reset()  # compiled code is per generator; stale entries would also hit the recompile limit
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


# --- measuring one candidate --------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def measure(gen, batch: int, plan: Plan) -> Measurement:
    """Time one warmed-up generator with `batch` busy slots (see the module docstring for the procedure)."""
    import psutil
    import torch

    from csm_runtime.engine.types import GenerationParams

    warm = gen.warmup()
    longest = max(plan.first_chunk_frames)
    frames = plan.warmup_frames + plan.timed_frames + longest + 8

    def params(seed: int, n_frames: int) -> GenerationParams:
        return GenerationParams(max_audio_ms=int(n_frames * FRAME_MS), seed=seed, first_chunk_frames=1,
                                chunk_frames=1)  # fmt: skip

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


def planned_settings(plan: Plan) -> list[tuple[str, str, bool]]:
    return [(d, c, g) for d in plan.dtypes for c in plan.compile_modes for g in plan.cuda_graphs]


def run_sweep(base: RuntimeSettings, plan: Plan, *, progress: Progress | None = None,
              factory: GeneratorFactory | None = None) -> SweepResult:  # fmt: skip
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
    settings = base.replace(dtype=common["dtype"], compile=common["compile"], cuda_graphs=common["cuda_graphs"],
                            max_streams=batch, first_chunk_frames=min(plan.first_chunk_frames))  # fmt: skip
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


# --- the choice ---------------------------------------------------------------------------------------------------


def rule_for(plan: Plan) -> Rule:
    return Rule(
        rtf_max=plan.rtf_max,
        ttfa_target_ms=plan.ttfa_target_ms,
        text=(
            f"most concurrent streams with RTF <= {plan.rtf_max:g} and TTFA <= {plan.ttfa_target_ms:g} ms "
            f"(first chunk of {min(plan.first_chunk_frames)} frame(s), request joining a busy batch); ties: lowest "
            "single-stream latency (batch-1 ms/frame of the same setting); first chunk: the largest within the TTFA "
            "target"
        ),
    )


def single_stream_ms(candidates: list[Candidate], cand: Candidate) -> float:
    """Batch-1 ms/frame of the candidate's setting (its own ms/frame if batch 1 was not measured)."""
    for c in candidates:
        if c.setting == cand.setting and c.batch == 1 and c.measurement is not None:
            return c.measurement.ms_per_frame_mean
    assert cand.measurement is not None
    return cand.measurement.ms_per_frame_mean


def qualifies(cand: Candidate, rule: Rule, first_chunk: int) -> bool:
    m = cand.measurement
    if m is None or m.rtf > rule.rtf_max:
        return False
    ttfa = m.ttfa_ms.get(first_chunk)
    return ttfa is not None and ttfa <= rule.ttfa_target_ms


def choose(candidates: list[Candidate], rule: Rule, first_chunk_options: tuple[int, ...]) -> Choice:
    """Apply the rule to the measured rows (see the module docstring); the returned `why` says how it decided."""
    measured = [c for c in candidates if c.status == "measured"]
    if not measured:
        reasons = "; ".join(f"{c.id}: {c.reason}" for c in candidates if c.status in ("oom", "failed"))
        raise AutotuneError(f"no candidate could be measured ({reasons or 'all skipped'})")
    fc_min = min(first_chunk_options)
    ok = [c for c in measured if qualifies(c, rule, fc_min)]
    order = {c.id: i for i, c in enumerate(candidates)}
    if ok:
        most = max(c.batch for c in ok)
        tied = [c for c in ok if c.batch == most]
        best = min(tied, key=lambda c: (single_stream_ms(candidates, c), c.measurement.ttfa_ms[fc_min], order[c.id]))
        m = best.measurement
        fits = [k for k in sorted(first_chunk_options) if m.ttfa_ms.get(k, float("inf")) <= rule.ttfa_target_ms]
        first_chunk = max(fits)
        why = (
            f"{len(ok)} of {len(measured)} measured candidates meet RTF <= {rule.rtf_max:g} with TTFA <= "
            f"{rule.ttfa_target_ms:g} ms; the most concurrent streams among them is {most}; "
            f"{len(tied)} candidate(s) reach it and {best.id} has the lowest single-stream latency "
            f"({single_stream_ms(candidates, best):.1f} ms/frame at batch 1). At batch {most}: RTF {m.rtf:.2f}, "
            f"{m.ms_per_frame_p50:.1f} ms/frame p50. First chunk {first_chunk} frame(s): the largest whose TTFA "
            f"({m.ttfa_ms[first_chunk]:.0f} ms) meets the target."
        )
        realtime = True
    else:
        singles = [c for c in measured if c.batch == 1] or measured
        best = min(singles, key=lambda c: (c.measurement.ms_per_frame_mean, order[c.id]))
        m = best.measurement
        first_chunk = fc_min if fc_min in m.ttfa_ms else min(m.ttfa_ms, default=fc_min)
        ttfa = m.ttfa_ms.get(first_chunk)
        why = (
            f"no measured candidate meets RTF <= {rule.rtf_max:g} with TTFA <= {rule.ttfa_target_ms:g} ms: this "
            f"device cannot serve this model in real time. Kept the fastest single stream so the server still runs: "
            f"{best.id} at RTF {m.rtf:.2f} ({m.ms_per_frame_mean:.1f} ms/frame"
            + (f", TTFA {ttfa:.0f} ms" if ttfa is not None else "")
            + f"), max_streams 1, first chunk {first_chunk} frame(s)."
        )
        realtime = False
    chosen = ChosenSettings(
        dtype=best.dtype,
        compile=best.compile,
        cuda_graphs=best.cuda_graphs,
        max_streams=best.batch if realtime else 1,
        first_chunk_frames=first_chunk,
    )
    return Choice(candidate=best.id, settings=chosen, realtime=realtime, why=why, measurement=m)


# --- the profile --------------------------------------------------------------------------------------------------


def build_profile(result: SweepResult, *, plot: str | None = None) -> Profile:
    plan, facts, base = result.plan, result.facts, result.settings
    rule = rule_for(plan)
    versions = package_versions()
    return Profile(
        schema_version=SCHEMA_VERSION,
        slug=facts.slug,
        identity=Identity(
            device=DeviceIdentity(**facts.__dict__),
            versions=Versions(**versions),
            model=ModelIdentity(id=base.model, revision=base.revision),
            created=datetime.now(timezone.utc).replace(microsecond=0),
        ),
        rule=rule,
        chosen=choose(result.candidates, rule, plan.first_chunk_frames),
        sweep=SweepInfo(
            quick=plan.quick,
            dtypes=list(plan.dtypes),
            compile_modes=list(plan.compile_modes),
            cuda_graphs=list(plan.cuda_graphs),
            batches=list(plan.batches),
            first_chunk_frames=list(plan.first_chunk_frames),
            warmup_frames=plan.warmup_frames,
            timed_frames=plan.timed_frames,
            stop_rtf=plan.stop_rtf,
            prompt=plan.prompt,
            duration_s=result.duration_s,
            cpu_threads=base.cpu_threads,
        ),
        candidates=result.candidates,
        plot=plot,
    )
