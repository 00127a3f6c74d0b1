"""The sweep behind a profile: measure each candidate of a plan (plan.py) on this device, every row in the table.

One generator per setting (everything but the batch), built with `max_streams` = the largest batch of the plan: its
batch buckets (engine/frame.py) make a batch of b cost what b streams cost, and it is the generator a server with
that many slots would run. Settings that share weights (same dtype and quantize) are built together and measured
in `rounds` interleaved rounds - round 1 of every (setting, batch), then round 2, ... - so a change of load on the
machine hits every candidate alike instead of whichever happened to run then (one round: rounds.py). A candidate
whose rounds disagree - spread past `plan.spread_limit`, as a burst of load on a shared machine makes them - gets
`plan.rounds` more, interleaved with the others that disagree, and its figures are the medians over all of them.

A setting's batch stops growing once its first round, and a second one run at once to confirm it (a burst of load
slows one round), are slower than real time (RTF > `stop_rtf`), or once it runs out of memory; larger ones are
recorded as skipped with that reason. Settings the device cannot run are recorded as skipped too
(`setting_skip_reason`). int8 settings also get their divergence from the unquantized weights (divergence.py).
The rule that picks among the rows is choice.py; the check that the pick holds over HTTP is delivery.py.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from csm_runtime.engine.generator import StreamingGenerator
from csm_runtime.engine.loader import GeneratorFactory
from csm_runtime.settings import RuntimeSettings
from csm_runtime.tuning.divergence import Reference, divergence, reference_sample
from csm_runtime.tuning.identity import DeviceFacts, detect_device
from csm_runtime.tuning.plan import Plan, Setting, candidate_id, planned_settings, setting_id, setting_skip_reason
from csm_runtime.tuning.profile import Candidate
from csm_runtime.tuning.rounds import FRAME_MS, RoundResult, measure, measure_round, spread, summarize

__all__ = ["SweepResult", "measure", "measure_round", "release_memory", "run_sweep", "summarize"]
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
# (candidate id, round number from 1, whether it is a round added because the first ones disagreed, the round)
OnRound = Callable[[str, int, bool, RoundResult], None]


@dataclass
class _Open:
    """A setting being measured: its generator, warm-up report, rounds per batch, and where its batch stopped."""

    setting: Setting
    gen: StreamingGenerator | None = None
    warm: dict = field(default_factory=dict)
    rounds: dict[int, list[RoundResult]] = field(default_factory=dict)
    extra: dict[int, int] = field(default_factory=dict)  # batch -> rounds added because the first ones disagreed
    stop_at: int | None = None  # first batch not measured
    stop_reason: str | None = None
    stop_status: str = "skipped"
    failure: tuple[str, str] | None = None  # (status, reason) when the setting could not be built or warmed up


def run_sweep(
    base: RuntimeSettings,
    plan: Plan,
    *,
    progress: Progress | None = None,
    factory: GeneratorFactory | None = None,
    on_round: OnRound | None = None,
) -> SweepResult:
    """Measure every candidate of `plan` for `base.model` on `base.device`; every row ends up in the table.
    `progress` hears of each row once final, `on_round` of each round as soon as it is measured."""
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
        opened = _measure_group(factory, base, plan, group, kind, report, done, total, on_round)
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
    on_round: OnRound | None = None,
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
    say = _Say(report, done, total, on_round or (lambda *_: None))
    try:
        for r in range(plan.rounds):
            for batch in plan.batches:
                for entry in opened:
                    if entry.gen is None or (entry.stop_at is not None and batch >= entry.stop_at):
                        continue
                    _one_round(entry, batch, plan, r, say)
        # rounds that disagree (a burst of load on a shared machine) are measured again: more rounds, same median rule
        again = [(e, b) for e in opened for b, rs in e.rounds.items() if _disagree(rs, plan) and e.gen is not None]
        for r in range(plan.rounds, 2 * plan.rounds):
            for entry, batch in again:
                if entry.gen is not None:
                    entry.extra[batch] = entry.extra.get(batch, 0) + 1
                    _one_round(entry, batch, plan, r, say)
    finally:
        for entry in opened:
            _close(entry)
    return opened


def _disagree(rounds: list[RoundResult], plan: Plan) -> bool:
    return spread([statistics.fmean(r.step_ms) for r in rounds]) > plan.spread_limit


@dataclass
class _Say:
    """Where a group's rounds are reported: the progress line (which round runs) and each round once measured."""

    report: Progress
    done: int
    total: int
    on_round: OnRound


def _one_round(entry: _Open, batch: int, plan: Plan, r: int, say: _Say, extra: bool = False) -> None:
    s = entry.setting
    cid = candidate_id(s.dtype, s.compile, s.cuda_graphs, batch, s.quantize)
    done = entry.rounds.get(batch, [])
    say.report("start", say.done, say.total, f"round {len(done) + 1} {cid}", None)
    try:
        result = measure_round(entry.gen, batch, plan, seed=len(done) * 1000)
    except Exception as exc:  # noqa: BLE001 - recorded on the row, the sweep goes on
        entry.stop_at, entry.stop_status = batch, "oom" if is_oom(exc) else "failed"
        entry.stop_reason = f"{'out of memory' if is_oom(exc) else 'failed'} at batch {batch}: {_describe(exc)}"
        _reset(entry)
        return
    entry.rounds.setdefault(batch, []).append(result)
    say.on_round(cid, len(entry.rounds[batch]), extra or r >= plan.rounds, result)
    if r != 0 or batch == max(plan.batches):
        return
    rtfs = [statistics.fmean(x.step_ms) / FRAME_MS for x in entry.rounds[batch]]
    if min(rtfs) <= plan.stop_rtf:
        return
    if len(rtfs) == 1:  # one slow round may be a burst of load: the batch stops growing only when a second agrees
        entry.extra[batch] = entry.extra.get(batch, 0) + 1
        _one_round(entry, batch, plan, r, say, extra=True)
        return
    entry.stop_at = next(b for b in plan.batches if b > batch)
    entry.stop_reason = (
        f"batch {batch} is already slower than real time (RTF {min(rtfs):.2f} > {plan.stop_rtf:g} in 2 rounds)"
    )


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
    m = summarize(rounds, batch, entry.warm, entry.extra.get(batch, 0))
    return Candidate(**common, status="measured", measurement=m, divergence=div)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {(text[0] if text else type(exc).__name__)[:300]}"
