"""`--device cuda`: one process, the weights built once, a grid of compile x CUDA graphs x batch (the sweep's own
round: b streams, then a request joining them for TTFA) plus transformers `generate` at batch 1. scripts/gpu_check
reuses its pieces (`_factory`, `hf_generate_row`, `codec_ms`) through `bench_generator`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from generator_inputs import TEXT, fmt

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
    m.config.codebook_eos_token_id = -1  # fixed length: generate() stops once codebooks 0..N-2 all equal this id (0)
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


def grid_setting(model, dtype, device, compile_mode, graphs, batches, frames):
    """One generator for a (compile mode, CUDA graphs) setting, max_streams = the largest batch, not warmed up; the
    sweep plan that measures it (one round per batch, `frames` timed frames) and the setting's label."""
    from csm_runtime.settings import RuntimeSettings
    from csm_runtime.tuning.plan import Plan

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
    return gen, plan, f"{dtype} compile {compile_mode}{' + graphs' if graphs else ''}"


def measured_row(gen, plan, label: str, device: str, batch: int, warm: dict) -> dict:
    """The sweep's own round at `batch` streams: ms/frame over the plan's timed frames, TTFA of a request joining."""
    import statistics

    from csm_runtime.tuning.sweep import measure_round

    r = measure_round(gen, batch, plan)
    mean = statistics.fmean(r.step_ms)
    return {
        "impl": "ours",
        "setting": label,
        "batch": batch,
        "ms_per_frame": round(mean, 3),
        "ms_per_frame_p50": round(statistics.median(r.step_ms), 3),
        "rtf": round(mean / 80, 4),
        "ttfa_ms": round(r.ttfa_ms.get(1, float("nan")), 2),
        "prefill_ms": round(r.prefill_ms, 2),
        "codec_ms": round(codec_ms(gen, device), 3),
        "peak_memory_mb": round(r.peak_memory_mb, 1),
        "compile_s": warm.get("compile_s"),
        "frames": plan.timed_frames,
    }


def grid_rows(model, dtype, device, compile_mode, graphs, batches, frames, keep=lambda row: None) -> list[dict]:
    """One generator (max_streams = the largest batch), warmed up (compile, graph capture per bucket), then one
    sweep round per batch: ms/frame over `frames` steps with b streams, TTFA of a request joining them."""
    import torch

    if _COMPILED.setdefault("mode", compile_mode) != compile_mode:  # compiled code is reused across graphs on/off
        torch._dynamo.reset()
        _COMPILED["mode"] = compile_mode
    gen, plan, label = grid_setting(model, dtype, device, compile_mode, graphs, batches, frames)
    rows = []
    try:
        warm = gen.warmup()
        for b in batches:
            row = measured_row(gen, plan, label, device, b, warm)
            row.update(prepare_s=warm.get("prepare_s"), cuda_graphs=warm.get("cuda_graphs"))
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
