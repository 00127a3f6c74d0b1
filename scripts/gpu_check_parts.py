"""The GPU check's parts, each run in its own process under its own limit by scripts/gpu_check.sh, in this order:
env, correctness (eager), bench (eager rows), graphs (replay checks and graph rows), then autotune
(gpu_check_autotune.py), then compiled (compiled checks and rows). See gpu_check_budget.py for the order's why."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import gpu_check_bench as bench
import gpu_check_correctness as cc
from gpu_check_record import DRY, NO_COMPILE_DRY, NO_CUDA, Part, device_name, guarded

NO_GRAPHS = "CUDA graphs need a CUDA device" + (" (dry run)" if DRY else "")


def part_env(work: Path) -> None:
    """Versions, the device, and the engine and moshi importing against this torch."""
    import importlib.metadata as md

    part = Part("env", work)
    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers", "huggingface_hub", "moshi", "numpy", "fastapi", "pydantic"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "absent"
    import torch

    info = {"versions": versions, "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
    with contextlib.suppress(OSError):
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    info["cpu_count"] = os.cpu_count()
    part.numbers(**info)
    import csm_runtime.engine.generator  # noqa: F401 - the engine imports against this torch
    from csm_runtime.engine.codec import build_mimi

    part.check(
        "imports",
        "pass",
        f"torch {versions['torch']}, transformers {versions['transformers']}, moshi {versions['moshi']}",
    )

    def mimi() -> None:
        build_mimi(None, torch.device("cpu"), tiny=True)
        part.check("moshi Mimi builds", "pass", "tiny random Mimi on CPU")

    guarded(part, "moshi Mimi builds", mimi)
    if device_name() == "cuda":
        part.check("cuda", "pass", f"{info['gpu']} ({info['gpu_memory_gib']} GiB), CUDA {torch.version.cuda}")
    else:
        part.check("cuda", "skipped", NO_CUDA)
    part.finish()


@contextlib.contextmanager
def no_tf32():
    """Comparisons, not speed: no TF32 (cuDNN's default for convolutions would round Mimi's float32 to 10 bits);
    torch's defaults again for the rows after them."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def part_correctness(work: Path) -> None:
    """The cheap checks, all eager: transformers equality, batch of 1 against 8, streaming audio, a joining stream."""
    part = Part("correctness", work)
    with no_tf32():
        _eager_checks(part, 6 if DRY else 24)
    part.finish()


def _eager_checks(part: Part, frames: int) -> None:
    guarded(part, "tiny-random == transformers generate", cc.check_hf_equal, part, "tiny-random", frames)
    for dtype in ("float32", "bfloat16"):

        def batches(dtype=dtype) -> None:
            results = cc.mode_codes(dtype, frames, ("eager",))
            cc.check_batch_agreement(part, dtype, frames, results, "eager")

        guarded(part, f"{dtype}: batch of 1 against 8 (eager)", batches)
    guarded(part, "streaming audio", cc.check_streaming_audio, part, 4 if DRY else 10)
    guarded(part, "join (eager)", cc.check_join, part, 4 if DRY else 12, False)
    if DRY:
        part.check("csm-1b-random == transformers generate", "skipped", "dry run: tiny-random only")
    else:
        guarded(part, "csm-1b-random == transformers generate", cc.check_hf_equal, part, "csm-1b-random", 3)


def part_bench(work: Path) -> None:
    """transformers `generate`, then our eager rows."""
    part = Part("bench", work)
    device = device_name()
    guarded(part, "transformers generate", bench.hf_row, part, device)
    bench.bench_setting(part, device, "off", False)
    part.finish()


def part_graphs(work: Path) -> None:
    """CUDA-graph replay against eager (float32 and bf16, batch 1 and 8), a stream joining a graphed batch, and the
    graph rows. On CPU every check is skipped with its reason (the dry run does not even import torch here)."""
    part = Part("graphs", work)
    if DRY or device_name() != "cuda":
        for dtype in ("float32", "bfloat16"):
            part.check(f"{dtype}: CUDA graph replay == eager", "skipped", NO_CUDA)
        part.check("float32 stream joining a running batch == alone (CUDA graphs)", "skipped", NO_CUDA)
        part.check("compile off, graphs on", "skipped", NO_GRAPHS)
        part.finish()
        return
    with no_tf32():
        for dtype in ("float32", "bfloat16"):

            def replay(dtype=dtype) -> None:
                results = cc.mode_codes(dtype, 24, ("eager", "eager+graphs"))
                cc.compare_modes(part, dtype, 24, results, "eager+graphs", "eager")

            guarded(part, f"{dtype}: CUDA graph replay == eager", replay)
        guarded(part, "join (CUDA graphs)", cc.check_join, part, 12, True)
    bench.bench_setting(part, "cuda", "off", True)
    part.finish()


def part_compiled(work: Path) -> None:
    """bf16 compiled against eager (a figure: inductor rounds differently), compiled graphs against compiled
    (identical), then the compiled rows. Last: inductor compiles take the longest."""
    part = Part("compiled", work)
    if DRY:
        part.check("bfloat16: compiled == eager", "skipped", NO_COMPILE_DRY)
        for graphs in (False, True):
            part.check(f"compile default, graphs {'on' if graphs else 'off'}", "skipped", NO_COMPILE_DRY)
        part.finish()
        return
    import torch

    device = device_name()
    cuda = device == "cuda"
    labels = ("eager", "compiled", "compiled+graphs") if cuda else ("eager", "compiled")

    def modes() -> None:
        results = cc.mode_codes("bfloat16", 24, labels)
        cc.compare_modes(part, "bfloat16", 24, results, "compiled", "eager")
        if cuda:
            cc.compare_modes(part, "bfloat16", 24, results, "compiled+graphs", "compiled")
        cc.check_batch_agreement(part, "bfloat16", 24, results, "compiled")

    with no_tf32():
        guarded(part, "bfloat16 compiled modes", modes)
    torch._dynamo.reset()  # another model: nothing to reuse, and no recompile limit reached on its account
    bench.bench_setting(part, device, "default", False)
    if cuda:
        bench.bench_setting(part, device, "default", True)  # reuses the compiled code of the row before
    else:
        part.check("compile default, graphs on", "skipped", NO_GRAPHS)
    part.finish()
