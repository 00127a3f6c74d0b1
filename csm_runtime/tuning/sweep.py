"""The sweep behind a profile: measure each candidate of a plan (plan.py) on this device, every row in the table.

One generator per setting (everything but the batch), built with `max_streams` = the largest batch of the plan: its
batch buckets (engine/frame.py) make a batch of b cost what b streams cost, and it is the generator a server with
that many slots would run. Settings that share weights (same dtype and quantize) are built together and measured
in `rounds` interleaved rounds - round 1 of every (setting, batch), then round 2, ... - so a change of load on the
machine hits every candidate alike instead of whichever happened to run then. Each round of a candidate: fill
`batch` rows, decode `warmup_frames` untimed then `timed_frames` timed steps (one frame per stream per step), then
free one row and time a request joining the busy batch: its time to first audio for each first-chunk size.

A setting's batch stops growing once its first round is slower than real time (RTF > `stop_rtf`) or runs out of
memory; larger ones are recorded as skipped with that reason. Settings the device cannot run are recorded as skipped
too (`setting_skip_reason`). int8 settings also get their divergence from the unquantized weights (divergence.py).
The rule that picks among the rows is choice.py; the check that the pick holds over HTTP is delivery.py.
"""

from __future__ import annotations

import gc
import os
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
from csm_runtime.tuning.divergence import Reference, divergence, reference_sample
from csm_runtime.tuning.identity import DeviceFacts, detect_device
from csm_runtime.tuning.plan import Plan, Setting, candidate_id, planned_settings, setting_id, setting_skip_reason
from csm_runtime.tuning.profile import Candidate, Measurement

FRAME_MS = 80.0
SWEEP_MAX_SEQ = 512  # the sweep's caches: a prompt + its frames fit, and the step time depends on the length bucket
# attended (engine/frame.py), not on the cache's size, so a server with the default 2048 runs at the same speed


def release_memory(device) -> None:
    """Drop compiled graphs and cached blocks between setting groups, so one group's memory is not the next's."""
    torch._dynamo.reset()  # compiled code is per generator; stale entries would also hit the recompile limit
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --- measuring one round of one candidate -------------------------------------------------------------------------


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


def summarize(rounds: list[RoundResult], batch: int, warm: dict) -> Measurement:
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
        spread=round((max(round_means) - min(round_means)) / typical, 4) if typical > 0 else 0.0,
        admission_wait_ms=round(wait, 2),
    )


def measure(gen: StreamingGenerator, batch: int, plan: Plan) -> Measurement:
    """Warm up one generator and time one candidate alone (`plan.rounds` rounds back to back): for benchmarks."""
    warm = gen.warmup()
    return summarize([measure_round(gen, batch, plan, seed=i * 100) for i in range(plan.rounds)], batch, warm)


# --- the sweep ----------------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    candidates: list[Candidate]
    duration_s: float
    facts: DeviceFacts
    settings: RuntimeSettings
    plan: Plan
    notes: list[str] = field(default_factory=list)
    load_avg: list[float] | None = None


# (phase 'start' | 'done', rows done, total rows, candidate id or what runs, the row once done)
Progress = Callable[[str, int, int, str, Candidate | None], None]


@dataclass
class _Open:
    """A setting being measured: its generator, warm-up report, rounds per batch, and where its batch stopped."""

    setting: Setting
    gen: StreamingGenerator | None = None
    warm: dict = field(default_factory=dict)
    rounds: dict[int, list[RoundResult]] = field(default_factory=dict)
    stop_at: int | None = None  # first batch not measured
    stop_reason: str | None = None
    stop_status: str = "skipped"
    failure: tuple[str, str] | None = None  # (status, reason) when the setting could not be built or warmed up


def run_sweep(
    base: RuntimeSettings, plan: Plan, *, progress: Progress | None = None, factory: GeneratorFactory | None = None
) -> SweepResult:
    """Measure every candidate of `plan` for `base.model` on `base.device`; every row ends up in the table."""
    started = time.perf_counter()
    facts = detect_device(base.device)
    factory = factory or GeneratorFactory(base)
    kind = factory.device.type
    settings = planned_settings(plan)
    total = len(settings) * len(plan.batches)
    report = progress or (lambda *_: None)
    rows: dict[tuple[Setting, int], Candidate] = {}
    references: dict[str, Reference] = {}
    done = 0
    groups: dict[tuple[str, str], list[Setting]] = {}
    for s in settings:
        groups.setdefault((s.dtype, s.quantize), []).append(s)
    for group in groups.values():
        opened = _measure_group(factory, base, plan, group, kind, report, done, total)
        divergences = _divergences(factory, base, plan, opened, references)
        for entry in opened:
            for batch in plan.batches:
                row = _row(entry, batch, plan, divergences.get(entry.setting))
                rows[(entry.setting, batch)] = row
                done += 1
                report("done", done, total, row.id, row)
        release_memory(factory.device)
    candidates = [rows[(s, b)] for s in settings for b in plan.batches]
    return SweepResult(candidates, round(time.perf_counter() - started, 1), facts, base, plan, load_avg=load_average())


def _generator_settings(base: RuntimeSettings, plan: Plan, s: Setting) -> RuntimeSettings:
    return base.replace(
        dtype=s.dtype,
        quantize=s.quantize,
        compile=s.compile,
        cuda_graphs=s.cuda_graphs,
        max_streams=max(plan.batches),
        max_seq_len=min(base.max_seq_len, SWEEP_MAX_SEQ),
        first_chunk_frames=min(plan.first_chunk_frames),
    )


def _measure_group(
    factory: GeneratorFactory,
    base: RuntimeSettings,
    plan: Plan,
    group: list[Setting],
    kind: str,
    report: Progress,
    done: int,
    total: int,
) -> list[_Open]:
    """Build and warm up every runnable setting of one weights group, then run the interleaved rounds."""
    opened = [_Open(s) for s in group]
    for entry in opened:
        s = entry.setting
        skip = setting_skip_reason(s.dtype, s.compile, s.cuda_graphs, kind, s.quantize)
        if skip:
            entry.failure = ("skipped", skip)
            continue
        report("start", done, total, f"{setting_id(s.dtype, s.compile, s.cuda_graphs, s.quantize)}: build", None)
        try:
            entry.gen = factory.build(_generator_settings(base, plan, s))
            entry.warm = entry.gen.warmup()
        except Exception as exc:  # one setting failing (OOM, a compile error) must not end the sweep
            entry.failure = ("oom" if is_oom(exc) else "failed", _describe(exc))
            _close(entry)
            gc.collect()
    try:
        for r in range(plan.rounds):
            for batch in plan.batches:
                for entry in opened:
                    if entry.gen is None or (entry.stop_at is not None and batch >= entry.stop_at):
                        continue
                    cid = candidate_id(
                        entry.setting.dtype,
                        entry.setting.compile,
                        entry.setting.cuda_graphs,
                        batch,
                        entry.setting.quantize,
                    )
                    report("start", done, total, f"round {r + 1}/{plan.rounds} {cid}", None)
                    _one_round(entry, batch, plan, r)
    finally:
        for entry in opened:
            _close(entry)
    return opened


def _one_round(entry: _Open, batch: int, plan: Plan, r: int) -> None:
    try:
        result = measure_round(entry.gen, batch, plan, seed=r * 1000)
    except Exception as exc:  # noqa: BLE001 - recorded on the row, the sweep goes on
        entry.stop_at, entry.stop_status = batch, "oom" if is_oom(exc) else "failed"
        entry.stop_reason = f"{'out of memory' if is_oom(exc) else 'failed'} at batch {batch}: {_describe(exc)}"
        _reset(entry)
        return
    entry.rounds.setdefault(batch, []).append(result)
    rtf = statistics.fmean(result.step_ms) / FRAME_MS
    if r == 0 and rtf > plan.stop_rtf and batch != max(plan.batches):
        entry.stop_at = next(b for b in plan.batches if b > batch)
        entry.stop_reason = f"batch {batch} is already slower than real time (RTF {rtf:.2f} > {plan.stop_rtf:g})"


def _reset(entry: _Open) -> None:
    """After a failed round the generator's rows are in an unknown state: cancel whatever is left."""
    gen = entry.gen
    if gen is None:
        return
    try:
        for sid in list(gen._streams):
            gen.cancel(sid)
        gen.step()
    except Exception:  # noqa: BLE001 - the generator is unusable; stop measuring this setting
        _close(entry)


def _close(entry: _Open) -> None:
    if entry.gen is not None:
        entry.gen.close()  # its Mimi goes back to the factory for the next build
        entry.gen = None


def _divergences(
    factory: GeneratorFactory,
    base: RuntimeSettings,
    plan: Plan,
    opened: list[_Open],
    references: dict[str, Reference],
):
    """int8 settings of this group against the unquantized weights of the same dtype (sampled when that group ran)."""
    out = {}
    measured = [e for e in opened if e.rounds]
    if not measured:
        return out
    first = measured[0].setting
    settings = _generator_settings(base, plan, first).replace(compile="off", cuda_graphs=False, max_streams=1)
    if first.quantize == "off" and first.dtype not in references and "int8" in plan.quantize:
        references[first.dtype] = _sample(factory, settings, plan)
    if first.quantize == "int8" and first.dtype in references:
        got = _sample(factory, settings, plan)
        ref = references[first.dtype]
        for e in measured:
            out[e.setting] = divergence(ref, got, plan)
    return out


def _sample(factory: GeneratorFactory, settings: RuntimeSettings, plan: Plan) -> Reference:
    gen = factory.build(settings)
    try:
        return reference_sample(gen, plan, setting_id(settings.dtype, "off", False))
    finally:
        gen.close()


def _row(entry: _Open, batch: int, plan: Plan, div) -> Candidate:
    s = entry.setting
    common = {
        "id": candidate_id(s.dtype, s.compile, s.cuda_graphs, batch, s.quantize),
        "dtype": s.dtype,
        "quantize": s.quantize,
        "compile": s.compile,
        "cuda_graphs": s.cuda_graphs,
        "batch": batch,
    }
    if entry.failure is not None:
        return Candidate(**common, status=entry.failure[0], reason=entry.failure[1])
    rounds = entry.rounds.get(batch)
    if not rounds:
        status = entry.stop_status if batch == entry.stop_at else "skipped"
        reason = entry.stop_reason or "not measured"
        return Candidate(**common, status=status, reason=reason)
    m = summarize(rounds, batch, entry.warm)
    return Candidate(**common, status="measured", measurement=m, divergence=div)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {(text[0] if text else type(exc).__name__)[:300]}"
