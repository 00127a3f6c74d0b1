"""Autotune regret: does the setting the sweep chose hold up when measured again, against the best alternative?

Runs a sweep, applies the choice rule, then re-measures (in the same process, interleaved round by round so drift
hits every row alike) the chosen candidate and every other measured candidate at the same batch size, i.e. every
setting that could serve the same number of streams. Regret = chosen re-measured ms/frame over the best re-measured
ms/frame, minus 1 (0 % = the sweep picked the best). Also reports whether the chosen batch still meets the RTF rule.
Table on stdout, JSON in bench/results/autotune.json.

    python bench/bench_autotune.py                                   # tiny-random on CPU: float32 vs bfloat16
    python bench/bench_autotune.py --model csm-1b-random --device cuda --compile off,default --graphs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from csm_runtime.engine.loader import GeneratorFactory
from csm_runtime.settings import RuntimeSettings
from csm_runtime.tuning.build import build_profile
from csm_runtime.tuning.plan import default_plan
from csm_runtime.tuning.sweep import measure, release_memory, run_sweep

RESULTS = Path(__file__).resolve().parent / "results" / "autotune.json"


def remeasure(factory: GeneratorFactory, base: RuntimeSettings, plan, cand) -> float:
    settings = base.replace(dtype=cand.dtype, compile=cand.compile, cuda_graphs=cand.cuda_graphs,
                            max_streams=cand.batch)  # fmt: skip
    release_memory(factory.device)
    gen = factory.build(settings)
    try:
        return measure(gen, cand.batch, plan).ms_per_frame_mean
    finally:
        gen.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--compile", default="off", help="comma-separated compile modes (inductor is minutes on a CPU)")
    ap.add_argument("--graphs", action="store_true", help="also sweep CUDA graphs (GPU)")
    ap.add_argument("--batches", default="1,2")
    ap.add_argument("--timed-frames", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3, help="re-measure rounds (interleaved)")
    ap.add_argument("--cpu-threads", type=int, default=1)
    args = ap.parse_args()

    base = RuntimeSettings(model=args.model, device=args.device, cpu_threads=args.cpu_threads, max_seq_len=512)
    factory = GeneratorFactory(base)
    plan = default_plan(
        factory.device.type,
        quick=True,
        dtypes=tuple(args.dtypes.split(",")),
        compile_modes=tuple(args.compile.split(",")),
        cuda_graphs=(False, True) if args.graphs else (False,),
        batches=tuple(int(b) for b in args.batches.split(",")),
        timed_frames=args.timed_frames,
        stop_rtf=1e9,  # measure every batch: regret needs alternatives at the chosen batch
    )
    t0 = time.perf_counter()
    result = run_sweep(base, plan, factory=factory)
    profile = build_profile(result)
    chosen = profile.candidate(profile.chosen.candidate)
    rivals = [c for c in profile.candidates if c.status == "measured" and c.batch == chosen.batch]
    samples: dict[str, list[float]] = {c.id: [] for c in rivals}
    for _ in range(args.rounds):
        for c in rivals:
            samples[c.id].append(remeasure(factory, base, plan, c))
    again = {cid: statistics.median(v) for cid, v in samples.items()}
    best_id = min(again, key=again.get)
    regret = again[chosen.id] / again[best_id] - 1
    rtf_again = again[chosen.id] / 80.0
    rows = []
    for c in rivals:
        rows.append({
            "candidate": c.id, "chosen": c.id == chosen.id, "sweep_ms_per_frame": c.measurement.ms_per_frame_mean,
            "remeasured_ms_per_frame": round(again[c.id], 2), "remeasured_samples": [round(x, 2) for x in samples[c.id]],
        })  # fmt: skip
    out = {
        "model": args.model,
        "device": profile.identity.device.name,
        "slug": profile.slug,
        "torch": profile.identity.versions.torch,
        "plan": {
            "dtypes": plan.dtypes,
            "compile": plan.compile_modes,
            "batches": plan.batches,
            "rounds": args.rounds,
            "timed_frames": plan.timed_frames,
        },  # fmt: skip
        "chosen": chosen.id,
        "chosen_realtime": profile.chosen.realtime,
        "best_remeasured": best_id,
        "regret_pct": round(100 * regret, 1),
        "chosen_rtf_sweep": chosen.measurement.rtf,
        "chosen_rtf_remeasured": round(rtf_again, 3),
        "chosen_still_meets_rule": rtf_again <= profile.rule.rtf_max,
        "rows": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(
        f"autotune regret: {args.model} on {out['device']} ({out['slug']}), batch {chosen.batch}, {args.rounds} rounds"
    )
    print(f"{'candidate':34} {'sweep ms/frame':>15} {'again ms/frame':>15}")
    for r in rows:
        mark = " <- chosen" if r["chosen"] else ""
        print(f"{r['candidate']:34} {r['sweep_ms_per_frame']:15.1f} {r['remeasured_ms_per_frame']:15.1f}{mark}")
    print(
        f"best on re-measure: {best_id}; regret {out['regret_pct']:.1f} %; chosen RTF sweep "
        f"{out['chosen_rtf_sweep']:.2f} -> again {out['chosen_rtf_remeasured']:.2f}; wall {out['wall_s']} s"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
