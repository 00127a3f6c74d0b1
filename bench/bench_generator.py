"""Generator benchmark: transformers `generate` vs our frame loop (eager, compiled), and batched vs sequential.

Every measurement runs in its own child process (same script, `--worker`), so peak RSS and compile caches belong
to one configuration. Same text, same model, greedy, fixed length. Prints a table, writes bench/results/generator.json.

    .venv/bin/python bench/bench_generator.py                      # tiny-random + csm-1b-random (bf16), ~15 min
    .venv/bin/python bench/bench_generator.py --models tiny-random --batches 1,4,8

Numbers: ms/frame = steady-state model time per frame (prefill excluded; our "step" column adds the Mimi decode);
TTFA = request start -> first audio chunk (HF: -> first frame of codes, it has no streaming audio); RTF = wall time /
audio time for the whole request; RSS = the child's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs away."
TEXTS = [TEXT, "Hello there, how are you today?", "Streaming speech, one frame at a time.", "A fourth request.",
         "Numbers: one, two, three, four.", "The sixth voice speaks.", "Seven is a lucky number.", "Eight, finally."]  # fmt: skip
DTYPES = {"tiny-random": "float32", "csm-1b-random": "bfloat16"}


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ---- workers (run in a child process) -------------------------------------------------------------------------
def work_hf(model: str, frames: int, threads: int) -> dict:
    import torch
    from transformers.generation.streamers import BaseStreamer

    from csm_runtime.engine.loader import load_generator

    torch.set_num_threads(threads)
    gen = load_generator(model, device="cpu", dtype=DTYPES[model], max_streams=1, max_seq_len=512)
    m = gen.loaded.model
    m.config.codebook_eos_token_id = -1  # fixed length, as in NOTES.md
    ids = torch.tensor([gen.prompt.text_rows(TEXT, 0)])

    class Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def run(n):
        clock = Clock()
        t0 = time.perf_counter()
        m.generate(input_ids=ids, max_new_tokens=n, do_sample=False, depth_decoder_do_sample=False, streamer=clock)
        return t0, clock.times[1:]  # the first put() is the prompt

    run(2)  # warm-up
    t0, times = run(frames)
    total = times[-1] - t0
    return {
        "impl": "hf-generate",
        "ms_per_frame": (times[-1] - times[0]) * 1000 / (len(times) - 1),
        "ttfa_ms": (times[0] - t0) * 1000,
        "rtf": total / (frames * 0.08),
        "rss_gib": _rss_gib(),
    }


def work_ours(model: str, frames: int, threads: int, compile_mode: str) -> dict:
    import torch

    from csm_runtime.engine.loader import load_generator
    from csm_runtime.engine.types import GenerationParams

    torch.set_num_threads(threads)
    gen = load_generator(model, device="cpu", dtype=DTYPES[model], max_streams=1, max_seq_len=512,
                         compile=compile_mode)  # fmt: skip
    report = gen.warmup()
    model_times = []
    inner = gen._run_frame

    def timed():
        t = time.perf_counter()
        out = inner()
        model_times.append(time.perf_counter() - t)
        return out

    gen._run_frame = timed
    params = GenerationParams(max_audio_ms=frames * 80, greedy=True, first_chunk_frames=1, chunk_frames=4)
    t0 = time.perf_counter()
    chunks = list(gen.stream(TEXT, 0, (), params))
    total = time.perf_counter() - t0
    m = chunks[-1].metrics
    steady = model_times[1:] or model_times
    return {
        "impl": f"ours-{'eager' if compile_mode == 'off' else 'compiled'}",
        "ms_per_frame": 1000 * sum(steady) / len(steady),
        "step_ms_per_frame": m.ms_per_frame,
        "ttfa_ms": m.ttfa_ms,
        "rtf": total / (m.frames_total * 0.08),
        "compile_s": report["compile_s"],
        "rss_gib": _rss_gib(),
    }


def work_throughput(model: str, frames: int, threads: int, batch: int, compile_mode: str) -> dict:
    import torch

    from csm_runtime.engine.loader import load_generator
    from csm_runtime.engine.types import GenerationParams

    torch.set_num_threads(threads)
    params = GenerationParams(max_audio_ms=frames * 80, greedy=True)
    texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
    out = {"impl": f"throughput-b{batch}", "batch": batch}
    for label, slots in (("batched", batch), ("sequential", 1)):
        gen = load_generator(model, device="cpu", dtype=DTYPES[model], max_streams=slots, max_seq_len=512,
                             compile=compile_mode)  # fmt: skip
        gen.warmup()
        t0 = time.perf_counter()
        done = 0
        if label == "batched":
            for t in texts:
                gen.add_stream(t, 0, (), params)
            while gen.active():
                done += sum(ev.chunk.frames for ev in gen.step() if ev.chunk is not None)
        else:
            for t in texts:
                done += sum(c.frames for c in gen.stream(t, 0, (), params))
        dt = time.perf_counter() - t0
        out[f"{label}_frames_per_s"] = done / dt
        out[f"{label}_s"] = dt
        del gen
    out["speedup"] = out["batched_frames_per_s"] / out["sequential_frames_per_s"]
    out["rss_gib"] = _rss_gib()
    return out


# ---- driver -----------------------------------------------------------------------------------------------------
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


def fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="tiny-random,csm-1b-random")
    ap.add_argument("--frames-tiny", type=int, default=24)
    ap.add_argument("--frames-real", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per child (this CPU is shared)")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--throughput-models", default="tiny-random,csm-1b-random")
    ap.add_argument("--throughput-compile", default="off")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench/results/generator.json"))
    args = ap.parse_args()
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
        common = {"model": model, "frames": frames, "threads": args.threads}
        rows.append(child("hf", **common))
        rows.append(child("ours", compile_mode="off", **common))
        if not args.skip_compile:
            rows.append(child("ours", compile_mode="default", **common))
        print(f"# {model} done", file=sys.stderr, flush=True)
    tput = []
    for model in [m for m in args.throughput_models.split(",") if m]:
        frames = args.frames_tiny if model == "tiny-random" else max(3, args.frames_real // 2)
        for b in [int(x) for x in args.batches.split(",") if x]:
            tput.append(child("throughput", model=model, frames=frames, threads=args.threads, batch=b,
                              compile_mode=args.throughput_compile))  # fmt: skip
            print(f"# throughput {model} b{b} done", file=sys.stderr, flush=True)

    print(f"\nper-frame latency (CPU, {args.threads} torch thread(s), shared 2-core box; greedy, same text)")
    print(
        f"{'model':15} {'impl':15} {'ms/frame':>9} {'step ms':>8} {'TTFA ms':>8} {'RTF':>7} {'compile s':>9} {'RSS GiB':>8}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['model']:15} {r['impl']:15} ERROR {r['error']}")
            continue
        print(f"{r['model']:15} {r['impl']:15} {fmt(r['ms_per_frame']):>9} {fmt(r.get('step_ms_per_frame')):>8} "
              f"{fmt(r['ttfa_ms']):>8} {fmt(r['rtf'], '.2f'):>7} {fmt(r.get('compile_s')):>9} {fmt(r['rss_gib'], '.2f'):>8}")  # fmt: skip
    for model in models:
        by = {r["impl"]: r for r in rows if r.get("model") == model and "error" not in r}
        for impl in ("ours-eager", "ours-compiled"):
            if impl in by and "hf-generate" in by:
                print(f"  {model}: {impl} is {by['hf-generate']['ms_per_frame'] / by[impl]['ms_per_frame']:.2f}x "
                      "faster per frame than HF generate")  # fmt: skip
    print("\nthroughput: B streams batched in one generator vs the same B requests one after another (max_streams=1)")
    print(f"{'model':15} {'B':>2} {'frames':>6} {'batched f/s':>11} {'sequential f/s':>14} {'speedup':>8}")
    for r in tput:
        if "error" in r:
            print(f"{r['model']:15} {r['batch']:>2} ERROR {r['error']}")
            continue
        print(f"{r['model']:15} {r['batch']:>2} {r['frames']:>6} {r['batched_frames_per_s']:>11.2f} "
              f"{r['sequential_frames_per_s']:>14.2f} {r['speedup']:>7.2f}x")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"latency": rows, "throughput": tput, "threads": args.threads, "cpu_count": os.cpu_count(),
               "note": "shared 2-core CPU; other helpers ran tests concurrently"}  # fmt: skip
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
