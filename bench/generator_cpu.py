"""The CPU measurements, each run in its own child process (`bench_generator.py --worker`), so peak RSS and compile
caches belong to one configuration: transformers `generate`, our frame loop (eager or compiled), and B streams
batched in one generator vs the same B requests one after another."""

from __future__ import annotations

import resource
import time

from generator_inputs import DTYPES, TEXT, TEXTS


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def work_hf(model: str, frames: int, threads: int, dtype: str | None = None) -> dict:
    import torch
    from transformers.generation.streamers import BaseStreamer

    from csm_runtime.engine.loader import load_generator

    torch.set_num_threads(threads)
    gen = load_generator(model, device="cpu", dtype=dtype or DTYPES[model], max_streams=1, max_seq_len=512)
    m = gen.loaded.model
    m.config.codebook_eos_token_id = -1  # fixed length: generate() stops once codebooks 0..N-2 all equal this id (0)
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
