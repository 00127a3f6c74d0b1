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
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs away."
TEXTS = [
    TEXT,
    "Hello there, how are you today?",
    "Streaming speech, one frame at a time.",
    "A fourth request.",
    "Numbers: one, two, three, four.",
    "The sixth voice speaks.",
    "Seven is a lucky number.",
    "Eight, finally.",
]
DTYPES = {"tiny-random": "float32", "csm-1b-random": "bfloat16"}


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ---- workers (run in a child process) -------------------------------------------------------------------------
def work_hf(model: str, frames: int, threads: int, dtype: str | None = None) -> dict:
    import torch
    from transformers.generation.streamers import BaseStreamer

    from csm_runtime.engine.loader import load_generator

    torch.set_num_threads(threads)
    gen = load_generator(model, device="cpu", dtype=dtype or DTYPES[model], max_streams=1, max_seq_len=512)
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


def work_ours(model: str, frames: int, threads: int, compile_mode: str, dtype: str | None = None) -> dict:
    import torch

    from csm_runtime.engine.loader import load_generator
    from csm_runtime.engine.types import GenerationParams

    torch.set_num_threads(threads)
    gen = load_generator(
        model, device="cpu", dtype=dtype or DTYPES[model], max_streams=1, max_seq_len=512, compile=compile_mode
    )
    report = gen.warmup(sampling=(False,))
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


def work_throughput(
    model: str,
    frames: int,
    threads: int,
    batch: int,
    compile_mode: str,
    dtype: str | None = None,
    cpu_linear: str = "auto",
) -> dict:
    import torch

    from csm_runtime.engine.loader import load_generator
    from csm_runtime.engine.types import GenerationParams

    torch.set_num_threads(threads)
    params = GenerationParams(max_audio_ms=frames * 80, greedy=True)
    texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
    out = {"impl": f"throughput-b{batch}", "batch": batch, "cpu_linear": cpu_linear}
    for label, slots in (("batched", batch), ("sequential", 1)):
        gen = load_generator(
            model,
            device="cpu",
            dtype=dtype or DTYPES[model],
            max_streams=slots,
            max_seq_len=512,
            compile=compile_mode,
            cpu_linear=cpu_linear,
        )
        gen.warmup(sampling=(False,))
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


# ---- in-process grid (GPU) -----------------------------------------------------------------------------------------
_FACTORIES: dict = {}
_COMPILED: dict = {}


def _factory(model: str, device: str):
    from csm_runtime.engine.loader import GeneratorFactory
    from csm_runtime.settings import RuntimeSettings

    key = (model, device)
    if key not in _FACTORIES:
        _FACTORIES.clear()  # one model in memory
        _FACTORIES[key] = GeneratorFactory(RuntimeSettings(model=model, device=device))
    return _FACTORIES[key]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def hf_generate_row(model: str, dtype: str, device: str, frames: int) -> dict:
    """transformers `generate` (greedy, fixed length) on the same device and weights: ms/frame after the first."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    from csm_runtime.settings import RuntimeSettings

    settings = RuntimeSettings(model=model, device=device, dtype=dtype, max_streams=1, max_seq_len=512)
    gen = _factory(model, device).build(settings)
    m = gen.loaded.model
    ids = torch.tensor([gen.prompt.text_rows(TEXT, 0)], device=gen.device)

    class Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            _sync(device)
            self.times.append(time.perf_counter())

        def end(self):
            pass

    saved = m.config.codebook_eos_token_id
    m.config.codebook_eos_token_id = -1  # fixed length, as in NOTES.md
    try:

        def run(n):
            clock = Clock()
            _sync(device)
            t0 = time.perf_counter()
            m.generate(input_ids=ids, max_new_tokens=n, do_sample=False, depth_decoder_do_sample=False, streamer=clock)
            return t0, clock.times[1:]  # the first put() is the prompt

        run(2)  # warm-up
        t0, times = run(frames)
    finally:
        m.config.codebook_eos_token_id = saved
        gen.close()
    per_frame = (times[-1] - times[0]) * 1000 / (len(times) - 1)
    return {
        "impl": "hf-generate",
        "setting": f"{dtype} eager",
        "batch": 1,
        "ms_per_frame": round(per_frame, 3),
        "rtf": round(per_frame / 80, 4),
        "ttfa_ms": round((times[0] - t0) * 1000, 2),
        "frames": frames,
    }


def codec_ms(gen, device: str, reps: int = 10) -> float:
    """One Mimi decode step over the generator's current slots (it decodes every slot, busy or not)."""
    import torch

    codes = torch.zeros(gen.codec.slots, 32, 1, dtype=torch.long, device=gen.device)
    gen.codec.decode_step(codes)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        gen.codec.decode_step(codes)
    _sync(device)
    return (time.perf_counter() - t0) * 1000 / reps


def grid_rows(model, dtype, device, compile_mode, graphs, batches, frames, keep=lambda row: None) -> list[dict]:
    """One generator (max_streams = the largest batch), warmed up (compile, graph capture per bucket), then one
    sweep round per batch: ms/frame over `frames` steps with b streams, TTFA of a request joining them."""
    import statistics

    import torch

    from csm_runtime.settings import RuntimeSettings
    from csm_runtime.tuning.plan import Plan
    from csm_runtime.tuning.sweep import measure_round

    if _COMPILED.setdefault("mode", compile_mode) != compile_mode:  # compiled code is reused across graphs on/off
        torch._dynamo.reset()
        _COMPILED["mode"] = compile_mode
    settings = RuntimeSettings(
        model=model,
        device=device,
        dtype=dtype,
        compile=compile_mode,
        cuda_graphs=graphs,
        max_streams=max(batches),
        max_seq_len=512,
    )
    gen = _factory(model, device).build(settings)
    label = f"{dtype} compile {compile_mode}{' + graphs' if graphs else ''}"
    rows = []
    try:
        warm = gen.warmup()
        plan = Plan(
            dtypes=(dtype,),
            compile_modes=(compile_mode,),
            cuda_graphs=(graphs,),
            batches=tuple(batches),
            first_chunk_frames=(1, 2),
            warmup_frames=4,
            timed_frames=frames,
            rounds=1,
        )
        for b in batches:
            r = measure_round(gen, b, plan)
            mean = statistics.fmean(r.step_ms)
            row = {
                "impl": "ours",
                "setting": label,
                "batch": b,
                "ms_per_frame": round(mean, 3),
                "ms_per_frame_p50": round(statistics.median(r.step_ms), 3),
                "rtf": round(mean / 80, 4),
                "ttfa_ms": round(r.ttfa_ms.get(1, float("nan")), 2),
                "prefill_ms": round(r.prefill_ms, 2),
                "codec_ms": round(codec_ms(gen, device), 3),
                "peak_memory_mb": round(r.peak_memory_mb, 1),
                "compile_s": warm.get("compile_s"),
                "prepare_s": warm.get("prepare_s"),
                "cuda_graphs": warm.get("cuda_graphs"),
                "frames": frames,
            }
            keep(row)
            rows.append(row)
    finally:
        gen.close()
    return rows


def main_device(args) -> int:
    """`--device cuda`: the in-process grid + transformers at batch 1, one table, bench/results/generator-cuda.json."""
    import os as _os

    batches = tuple(int(x) for x in args.batches.split(","))
    model, dtype = args.models.split(",")[0], args.dtype
    rows = [hf_generate_row(model, dtype, args.device, 16)]
    for compile_mode in args.compile.split(","):
        for graphs in (False, True):
            try:
                rows += grid_rows(model, dtype, args.device, compile_mode, graphs, batches, args.frames_real)
            except Exception as exc:  # noqa: BLE001 - one failing setting is a row, not the end of the table
                rows.append({"impl": "ours", "setting": f"compile {compile_mode} graphs {graphs}", "error": str(exc)})
    print(f"{'impl':12} {'setting':38} {'B':>3} {'ms/frame':>9} {'RTF':>6} {'TTFA ms':>8} {'codec ms':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['impl']:12} {r['setting']:38} ERROR {r['error'][:80]}")
            continue
        print(
            f"{r['impl']:12} {r['setting']:38} {r['batch']:>3} {r['ms_per_frame']:>9.2f} {r['rtf']:>6.3f} "
            f"{r['ttfa_ms']:>8.1f} {fmt(r.get('codec_ms'), '.2f'):>8}"
        )
    out = Path(args.out.replace("generator.json", f"generator-{args.device.split(':')[0]}.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "load_avg": _os.getloadavg()}, indent=2))
    print(f"wrote {out}")
    return 0


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


def fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


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
