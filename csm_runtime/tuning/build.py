"""A sweep's result -> the `Profile` written to `profiles/<slug>.yaml`: identity, the rule, the choice, the table;
and the profile's figures: what its setting delivers (`with_figures`)."""

from __future__ import annotations

from datetime import datetime, timezone

from csm_runtime.tuning.choice import choose, rule_for
from csm_runtime.tuning.identity import package_versions
from csm_runtime.tuning.profile import (
    SCHEMA_VERSION,
    Delivery,
    DeviceIdentity,
    Figures,
    Identity,
    ModelIdentity,
    Predicted,
    Profile,
    SweepInfo,
    Versions,
)
from csm_runtime.tuning.sweep import SweepResult


def build_profile(result: SweepResult, *, plot: str | None = None, delivery: Delivery | None = None) -> Profile:
    plan, facts, base = result.plan, result.facts, result.settings
    rule = rule_for(plan)
    versions = package_versions()
    profile = Profile(
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
            rounds=plan.rounds,
            quantize=list(plan.quantize),
            load_avg=result.load_avg,
        ),
        candidates=result.candidates,
        plot=plot,
    )
    return with_figures(profile, delivery)


def with_figures(profile: Profile, delivery: Delivery | None = None) -> Profile:
    """The profile with `delivery` recorded and its figures set: the delivered ones when the check ran, the sweep's
    otherwise; the sweep's stay beside them as `predicted`."""
    chosen, rule = profile.chosen, profile.rule
    fc = chosen.settings.first_chunk_frames
    predicted = Predicted(rtf=chosen.measurement.rtf, ttfa_ms=chosen.measurement.ttfa_ms[fc])
    if delivery is not None:
        source, rtf, ttfa = "delivered", delivery.delivered_rtf, delivery.delivered_ttfa_ms
    else:
        source, rtf, ttfa = "sweep", predicted.rtf, predicted.ttfa_ms
    figures = Figures(
        source=source,
        streams=chosen.settings.max_streams,
        first_chunk_frames=fc,
        rtf=rtf,
        ttfa_ms=ttfa,
        within_rule=rtf <= rule.rtf_max and ttfa <= rule.ttfa_target_ms,
        predicted=predicted,
    )
    return profile.model_copy(update={"chosen": chosen.model_copy(update={"figures": figures}), "delivery": delivery})
