"""The GPU check's benchmark rows: transformers `generate` at batch 1, and our frame loop at each measured batch for
one (compile mode, CUDA graphs) setting. The sweep's own round (tuning/sweep.py: b streams, then a request joining
them for TTFA) measures each batch, on one generator built once per setting.

Unlike a server's warm-up, nothing is prepared ahead for buckets no row measures: a server captures a graph for every
(batch bucket, length bucket), 21 of them at 64 streams and 512 positions, while the rows meet one bucket per batch.
Each round's untimed warm-up frames capture (or compile) the bucket it runs at, so the timed frames replay it."""

from __future__ import annotations

from gpu_check_record import DRY, Part, guarded

MODEL = "tiny-random" if DRY else "csm-1b-random"
DTYPE = "float32" if DRY else "bfloat16"
BATCHES = (1, 2) if DRY else (1, 8, 32, 64)
FRAMES = 3 if DRY else 24


def hf_row(part: Part, device: str) -> None:
    import bench_generator as bg

    part.row(bg.hf_generate_row(MODEL, DTYPE, device, 2 if DRY else 16))


def setting_rows(part: Part, device: str, compile_mode: str, graphs: bool) -> int:
    """One row per measured batch, each kept as it comes; returns how many."""
    import bench_generator as bg

    gen, plan, label = bg.grid_setting(MODEL, DTYPE, device, compile_mode, graphs, BATCHES, FRAMES)
    measured = 0
    try:
        warm = gen.warmup(sampling=())  # one utterance through the whole path (the compile); no bucket prepared
        for batch in BATCHES:
            row = bg.measured_row(gen, plan, label, device, batch, warm)
            part.row({**row, "graphs_captured": len(getattr(gen, "_graphs", {})), "frames": FRAMES})
            measured += 1
    finally:
        gen.close()
    return measured


def bench_setting(part: Part, device: str, compile_mode: str, graphs: bool) -> None:
    """The rows of one setting as one check (an exception is its error; the rows measured before it stay)."""
    label = f"compile {compile_mode}, graphs {'on' if graphs else 'off'}"
    measured = guarded(part, label, setting_rows, part, device, compile_mode, graphs)
    if measured is not None:
        part.check(label, "pass", f"{measured} batch sizes measured ({', '.join(map(str, BATCHES))})")


def derived(rows: list[dict]) -> dict:
    """transformers `generate` against our best batch-1 row, and the most streams each faster than real time."""
    out: dict = {}
    hf = next((r for r in rows if r.get("impl") == "hf-generate"), None)
    ours = [r for r in rows if r.get("batch") == 1 and r.get("impl") == "ours"]
    if hf and ours:
        best = min(ours, key=lambda r: r["ms_per_frame"])
        out.update(hf_vs_ours_b1=round(hf["ms_per_frame"] / best["ms_per_frame"], 3), best_b1=best["setting"])
    realtime = [r["batch"] for r in rows if r.get("impl") == "ours" and r.get("rtf", 9) < 1.0]
    out["max_realtime_batch"] = max(realtime) if realtime else 0
    return out
