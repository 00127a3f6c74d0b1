"""A sweep's result -> the `Profile` written to `profiles/<slug>.yaml`: identity, the rule, the choice, the table."""

from __future__ import annotations

from datetime import datetime, timezone

from csm_runtime.tuning.choice import choose, rule_for
from csm_runtime.tuning.identity import package_versions
from csm_runtime.tuning.profile import (
    SCHEMA_VERSION,
    Delivery,
    DeviceIdentity,
    Identity,
    ModelIdentity,
    Profile,
    SweepInfo,
    Versions,
)
from csm_runtime.tuning.sweep import SweepResult


def build_profile(result: SweepResult, *, plot: str | None = None, delivery: Delivery | None = None) -> Profile:
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
            rounds=plan.rounds,
            quantize=list(plan.quantize),
            load_avg=result.load_avg,
        ),
        candidates=result.candidates,
        plot=plot,
        delivery=delivery,
    )
