"""The parts of `make gpu-check`; scripts/gpu_check.sh runs each in its own process, under its own limit, in the
order of gpu_check_budget.PARTS:

    python scripts/gpu_check.py env          --work DIR        # versions, device, what the wheels replaced
    python scripts/gpu_check.py correctness  --work DIR        # eager: == transformers, batch 1 vs 8, audio, join
    python scripts/gpu_check.py bench        --work DIR        # transformers generate + our eager rows
    python scripts/gpu_check.py graphs       --work DIR        # CUDA-graph replay checks + graph rows
    python scripts/gpu_check.py autotune     --work DIR --out OUT --limit S   # `csm-runtime autotune --quick`
    python scripts/gpu_check.py compiled     --work DIR        # compiled checks + compiled rows
    python scripts/gpu_check.py summary      --work DIR --out OUT   # summary.md + results.json

Each part writes DIR/<part>.json as it goes (a part killed by its time limit keeps what it finished) with a status:
pass, fail, skipped (with the reason: no CUDA, dry run), timeout, or error. `GPU_CHECK_DRY_RUN=1` is the CPU dry run
the test suite runs: tiny-random, tiny frame counts, every CUDA part reported skipped with its reason, never faked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gpu_check_budget as budget


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=[*budget.PARTS[1:], "summary"])
    ap.add_argument("--work", required=True)
    ap.add_argument("--out")
    ap.add_argument("--limit", type=float, default=600.0, help="the part's limit in seconds (autotune ends by it)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or work)
    out.mkdir(parents=True, exist_ok=True)
    if args.part == "summary":
        from gpu_check_summary import part_summary

        return part_summary(work, out)
    if args.part == "autotune":
        from gpu_check_autotune import part_autotune

        part_autotune(work, out, args.limit)
        return 0
    import gpu_check_parts as parts

    {
        "env": parts.part_env,
        "correctness": parts.part_correctness,
        "bench": parts.part_bench,
        "graphs": parts.part_graphs,
        "compiled": parts.part_compiled,
    }[args.part](work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
