"""Generator benchmark: transformers `generate` vs our frame loop (eager, compiled), and batched vs sequential.

CPU: every measurement runs in its own child process (same script, `--worker`), so peak RSS and compile caches belong
to one configuration. Same text, same model, greedy, fixed length. Prints a table, writes bench/results/generator.json.
`--device cuda` (what `make gpu-check` runs): one process, the weights built once, a grid of compile x CUDA graphs x
batch (the sweep's own round: b streams, then a request joining them for TTFA) plus `generate` at batch 1, written
to bench/results/generator-cuda.json.

    .venv/bin/python bench/bench_generator.py                      # tiny-random + csm-1b-random (bf16), ~15 min
    .venv/bin/python bench/bench_generator.py --models tiny-random --batches 1,4,8
    python bench/bench_generator.py --device cuda --batches 1,8,32,64     # csm-1b-random bf16 on the GPU

Numbers: ms/frame = steady-state model time per frame (prefill excluded; our "step" column adds the Mimi decode);
TTFA = request start -> first audio chunk (HF: -> first frame of codes, it has no streaming audio); RTF = wall time /
audio time for the whole request; RSS = the child's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from generator_cpu import work_hf, work_ours, work_throughput
from generator_cuda import _factory as _factory  # re-exported: scripts/gpu_check_bench.py imports them from here
from generator_cuda import codec_ms as codec_ms
from generator_cuda import grid_setting as grid_setting
from generator_cuda import hf_generate_row as hf_generate_row
from generator_cuda import main_device
from generator_cuda import measured_row as measured_row
from generator_inputs import DTYPES, fmt

ROOT = Path(__file__).resolve().parent.parent


# ---- driver -----------------------------------------------------------------------------------------------------
def dtype_of(model: str, args) -> str:
    return args.real_dtype if model == "csm-1b-random" else DTYPES[model]


def child(kind: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps({"kind": kind, **kw})]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return {"impl": kind, "error": tail[0], **kw}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(kw, wall_s=time.perf_counter() - t)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="tiny-random,csm-1b-random")
    ap.add_argument("--frames-tiny", type=int, default=24)
    ap.add_argument("--frames-real", type=int, default=6)
    ap.add_argument("--throughput-frames-real", type=int, default=24, help="frames per stream, csm-1b-random")
    ap.add_argument("--real-dtype", default="bfloat16", help="csm-1b-random's dtype on CPU (tiny-random: float32)")
    ap.add_argument("--device", default="cpu", help="cpu (child processes) | cuda (in-process grid)")
    ap.add_argument("--dtype", default="bfloat16", help="with --device cuda")
    ap.add_argument("--compile", default="off,default", help="with --device cuda: compile modes of the grid")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per child (this CPU is shared)")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--throughput-models", default="tiny-random,csm-1b-random")
    ap.add_argument("--throughput-compile", default="off")
    ap.add_argument("--cpu-linear", default="auto", help="the throughput runs' cpu_linear: auto | onednn | mkl")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench/results/generator.json"))
    args = ap.parse_args()
    if args.device != "cpu":
        return main_device(args)
    if args.worker:
        spec = json.loads(args.worker)
        kind = spec.pop("kind")
        fn = {"hf": work_hf, "ours": work_ours, "throughput": work_throughput}[kind]
        print(json.dumps(fn(**spec)))
        return 0

    rows = []
    models = [m for m in args.models.split(",") if m]
    for model in models:
        frames = args.frames_tiny if model == "tiny-random" else args.frames_real
        common = {"model": model, "frames": frames, "threads": args.threads, "dtype": dtype_of(model, args)}
        rows.append(child("hf", **common))
        rows.append(child("ours", compile_mode="off", **common))
        if not args.skip_compile:
            rows.append(child("ours", compile_mode="default", **common))
        print(f"# {model} done", file=sys.stderr, flush=True)
    tput = []
    for model in [m for m in args.throughput_models.split(",") if m]:
        frames = args.frames_tiny if model == "tiny-random" else args.throughput_frames_real
        for b in [int(x) for x in args.batches.split(",") if x]:
            tput.append(
                child(
                    "throughput",
                    model=model,
                    frames=frames,
                    threads=args.threads,
                    batch=b,
                    compile_mode=args.throughput_compile,
                    dtype=dtype_of(model, args),
                    cpu_linear=args.cpu_linear,
                )
            )
            print(f"# throughput {model} b{b} done", file=sys.stderr, flush=True)

    print(f"\nper-frame latency (CPU, {args.threads} torch thread(s), shared 2-core box; greedy, same text)")
    print(
        f"{'model':15} {'impl':15} {'ms/frame':>9} {'step ms':>8} {'TTFA ms':>8} {'RTF':>7} {'compile s':>9} {'RSS GiB':>8}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['model']:15} {r['impl']:15} ERROR {r['error']}")
            continue
        print(
            f"{r['model']:15} {r['impl']:15} {fmt(r['ms_per_frame']):>9} {fmt(r.get('step_ms_per_frame')):>8} "
            f"{fmt(r['ttfa_ms']):>8} {fmt(r['rtf'], '.2f'):>7} {fmt(r.get('compile_s')):>9} {fmt(r['rss_gib'], '.2f'):>8}"
        )
    for model in models:
        by = {r["impl"]: r for r in rows if r.get("model") == model and "error" not in r}
        for impl in ("ours-eager", "ours-compiled"):
            if impl in by and "hf-generate" in by:
                print(
                    f"  {model}: {impl} is {by['hf-generate']['ms_per_frame'] / by[impl]['ms_per_frame']:.2f}x "
                    "faster per frame than HF generate"
                )
    print("\nthroughput: B streams batched in one generator vs the same B requests one after another (max_streams=1)")
    print(f"{'model':15} {'B':>2} {'frames':>6} {'batched f/s':>11} {'sequential f/s':>14} {'speedup':>8}")
    for r in tput:
        if "error" in r:
            print(f"{r['model']:15} {r['batch']:>2} ERROR {r['error']}")
            continue
        print(
            f"{r['model']:15} {r['batch']:>2} {r['frames']:>6} {r['batched_frames_per_s']:>11.2f} "
            f"{r['sequential_frames_per_s']:>14.2f} {r['speedup']:>7.2f}x"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "latency": rows,
        "throughput": tput,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_avg_after": os.getloadavg(),
        "note": "shared 2-core CPU; other jobs may run concurrently",
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
