"""The rule that picks a profile's settings from the measured candidates, stated once (`rule_for`) and applied by
`choose`.

The most concurrent streams that stay real time with headroom (RTF <= rtf_max) with TTFA within the target; ties go
to the setting with the lowest single-stream latency (its batch-1 ms/frame). The first chunk is the largest that still
meets the TTFA target (more audio buffered against network jitter). When nothing qualifies the fastest single stream
is kept, marked `realtime: false`, so a server still starts and says why. A candidate with int8 weights is never
picked, in either case, unless its divergence from the unquantized weights is within the rule's bound (greedy codes
agreement and logit cosine, both stated in the rule).
"""

from __future__ import annotations

from csm_runtime.tuning.plan import Plan
from csm_runtime.tuning.profile import Candidate, Choice, ChosenSettings, Rule


class AutotuneError(RuntimeError):
    """The sweep could not produce a profile (nothing measurable); the message lists why per candidate."""


def rule_for(plan: Plan) -> Rule:
    return Rule(
        rtf_max=plan.rtf_max,
        ttfa_target_ms=plan.ttfa_target_ms,
        min_codes_agreement=plan.min_codes_agreement,
        min_logit_cosine=plan.min_logit_cosine,
        text=(
            f"most concurrent streams with RTF <= {plan.rtf_max:g} and TTFA <= {plan.ttfa_target_ms:g} ms "
            f"(first chunk of {min(plan.first_chunk_frames)} frame(s), request joining a busy batch); ties: lowest "
            "single-stream latency (batch-1 ms/frame of the same setting); first chunk: the largest within the TTFA "
            f"target; int8 weights only with greedy codes agreement >= {plan.min_codes_agreement:g} over "
            f"{plan.divergence_frames} frames and logit cosine >= {plan.min_logit_cosine:g}"
        ),
    )


def allowed(cand: Candidate, rule: Rule) -> bool:
    """Unquantized rows always; int8 rows only with a divergence measured within the rule's bound."""
    if cand.quantize == "off":
        return True
    d = cand.divergence
    return d is not None and d.codes_agreement >= rule.min_codes_agreement and d.logit_cosine >= rule.min_logit_cosine


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
    measured = [c for c in candidates if c.status == "measured" and allowed(c, rule)]
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
        refused = [c for c in candidates if c.status == "measured" and not allowed(c, rule)]
        if refused:
            why += f" {len(refused)} int8 candidate(s) were not considered: divergence past the bound."
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
        quantize=best.quantize,
        compile=best.compile,
        cuda_graphs=best.cuda_graphs,
        max_streams=best.batch if realtime else 1,
        first_chunk_frames=first_chunk,
    )
    return Choice(candidate=best.id, settings=chosen, realtime=realtime, why=why, measurement=m)
