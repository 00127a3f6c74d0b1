"""The parts of `make gpu-check` (scripts/gpu_check.sh runs each in its own process, under its own time limit).

    python scripts/gpu_check.py env          --work DIR        # versions, device, what the wheels replaced
    python scripts/gpu_check.py correctness  --work DIR        # a. CUDA correctness
    python scripts/gpu_check.py bench        --work DIR        # b. generator benchmark + transformers baseline
    python scripts/gpu_check.py autotune     --work DIR        # c. `csm-runtime autotune --quick`
    python scripts/gpu_check.py summary      --work DIR --out OUT   # d. summary.md + results.json

Each part writes DIR/<part>.json as it goes (a part killed by its time limit keeps what it finished) with a status:
pass, fail, skipped (with the reason: no CUDA, dry run), or error. `GPU_CHECK_DRY_RUN=1` is the CPU dry run the test
suite runs: tiny-random, tiny frame counts, every CUDA part reported skipped with its reason, never faked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # csm_runtime from this checkout, whatever PYTHONPATH says
sys.path.insert(1, str(ROOT / "bench"))

DRY = os.environ.get("GPU_CHECK_DRY_RUN") == "1"
TEXTS = (
    "Hello there, how are you?",
    "The quick brown fox.",
    "Streaming speech, one frame at a time!",
    "A fourth voice joins in.",
    "Numbers: one, two, three, four.",
    "The sixth request speaks.",
    "Seven is a lucky number.",
    "Eight, finally.",
)
PARTS = ("env", "correctness", "bench", "autotune")


class Part:
    """One part's record, written to WORK/<name>.json after every check so a killed part keeps what it finished."""

    def __init__(self, name: str, work: Path) -> None:
        self.name, self.path = name, work / f"{name}.json"
        self.t0 = time.perf_counter()
        self.data: dict = {"part": name, "status": "running", "dry_run": DRY, "checks": [], "numbers": {}}
        self.save()

    def check(self, name: str, status: str, detail: str = "", **numbers) -> None:
        """status: pass | fail | skipped | info | error."""
        entry = {"name": name, "status": status, "detail": detail, **numbers}
        self.data["checks"].append(entry)
        print(f"[{self.name}] {status.upper():7} {name}: {detail}", flush=True)
        self.save()

    def numbers(self, **values) -> None:
        self.data["numbers"].update(values)
        self.save()

    def finish(self, status: str | None = None) -> None:
        states = [c["status"] for c in self.data["checks"]]
        if status is None:
            status = "fail" if "fail" in states or "error" in states else "pass"
            if states and all(s == "skipped" for s in states):
                status = "skipped"
        self.data["status"] = status
        self.save()

    def save(self) -> None:
        self.data["duration_s"] = round(time.perf_counter() - self.t0, 1)
        self.path.write_text(json.dumps(self.data, indent=2, default=str))


def guarded(part: Part, name: str, fn, *args, **kwargs):
    """Run one check; an exception is that check's error (with its last line), never the end of the part."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - recorded, the other checks still run
        tb = traceback.format_exc().strip().splitlines()
        part.check(name, "error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:400])
        print("\n".join(tb[-12:]), file=sys.stderr, flush=True)
        return None


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and not DRY else "cpu"


# ---- env ------------------------------------------------------------------------------------------------------------
def part_env(work: Path) -> None:
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
    guarded(
        part,
        "moshi Mimi builds",
        lambda: (
            build_mimi(None, torch.device("cpu"), tiny=True),
            part.check("moshi Mimi builds", "pass", "tiny random Mimi on CPU"),
        )[1],
    )
    if torch.cuda.is_available() and not DRY:
        part.check("cuda", "pass", f"{info['gpu']} ({info['gpu_memory_gib']} GiB), CUDA {torch.version.cuda}")
    else:
        part.check("cuda", "skipped", "no CUDA device" + (" (dry run)" if DRY else ""))
    part.finish()


# ---- a. correctness -------------------------------------------------------------------------------------------------
def _gen(model: str, dtype: str, **kw):
    from csm_runtime.engine.loader import load_generator

    return load_generator(model, device=device_name(), dtype=dtype, **kw)


def _batch_codes(gen, texts, frames: int):
    """Greedy codes of `texts` decoded together (all joined at once) -> list of [frames, 32]."""
    import numpy as np

    from csm_runtime.engine.types import GenerationParams

    params = GenerationParams(max_audio_ms=frames * 80, greedy=True, first_chunk_frames=1, chunk_frames=1)
    ids = [gen.add_stream(t, i % 2, (), params) for i, t in enumerate(texts)]
    codes = {i: [] for i in ids}
    while gen.active():
        for ev in gen.step():
            if ev.chunk is not None and ev.stream_id in codes:
                codes[ev.stream_id].append(ev.chunk.codes)
    return [np.concatenate(codes[i]) for i in ids]


def _agreement(a, b) -> float:
    n = min(len(a), len(b))
    return float((a[:n] == b[:n]).mean()) if n else 0.0


def _first_diff(a, b) -> int | None:
    for i in range(min(len(a), len(b))):
        if (a[i] != b[i]).any():
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_hf_equal(part: Part, model: str, frames: int) -> None:
    import numpy as np

    from tests.fakes.runtime_fixtures import hf_greedy_codes

    gen = _gen(model, "float32", max_streams=1, max_seq_len=256)
    ours = gen.frame_codes(TEXTS[0], speaker=1, frames=frames)
    ref = hf_greedy_codes(gen, TEXTS[0], 1, frames)
    name = f"{model} float32 {frames} frames == transformers generate ({device_name()})"
    if ours.shape == ref.shape and np.array_equal(ours, ref):
        part.check(name, "pass", f"{ours.size} codes equal")
    else:
        part.check(
            name, "fail", f"first differing frame {_first_diff(ours, ref)}, agreement {_agreement(ours, ref):.3f}"
        )
    gen.close()


def check_modes(part: Part, dtype: str, frames: int) -> None:
    """Eager, compiled, and each replayed as CUDA graphs, at batch 1 and 8: greedy codes of the same texts."""
    import torch

    cuda = device_name() == "cuda"
    compiled = dtype == "bfloat16" and not DRY  # float32 compiled == eager is the CPU suite's test
    variants = [("eager", "off", False)]
    variants += [("eager+graphs", "off", True)] if cuda else []
    variants += [("compiled", "default", False)] if compiled else []
    variants += [("compiled+graphs", "default", True)] if compiled and cuda else []
    results: dict[str, dict[int, list]] = {}
    torch._dynamo.reset()
    for label, mode, graphs in variants:  # compiled code carries over from compiled to compiled+graphs
        gen = _gen("tiny-random", dtype, max_streams=8, max_seq_len=256, compile=mode, cuda_graphs=graphs)
        results[label] = {1: _batch_codes(gen, TEXTS[:1], frames), 8: _batch_codes(gen, TEXTS, frames)}
        gen.close()
    if DRY and dtype == "bfloat16":
        part.check(f"{dtype}: compiled == eager", "skipped", "dry run: inductor compiles take minutes on this CPU")
    if not cuda:
        part.check(f"{dtype}: CUDA graph replay == eager", "skipped", "no CUDA device" + (" (dry run)" if DRY else ""))
    base = results["eager"]
    for label in results:
        if label == "eager":
            continue
        twin = "eager" if label in ("compiled", "eager+graphs") else "compiled"
        for batch in (1, 8):
            got, ref = results[label][batch], results[twin][batch]
            agree = statistics.fmean(_agreement(a, b) for a, b in zip(got, ref, strict=True))
            same = all(a.shape == b.shape and (a == b).all() for a, b in zip(got, ref, strict=True))
            name = f"{dtype} batch {batch}: {label} == {twin}"
            if same:
                part.check(name, "pass", f"{len(got)} stream(s) x {frames} frames identical")
            elif dtype == "bfloat16" and twin == "eager" and label == "compiled":
                # inductor fuses bf16 ops (fp32 accumulation inside a kernel): greedy argmax can flip on near-ties
                part.check(
                    name,
                    "info",
                    f"codes agreement {agree:.3f} (bf16 rounding differs between kernels)",
                    agreement=agree,
                )
            else:
                part.check(name, "fail", f"codes agreement {agree:.3f}", agreement=agree)
        if label == "compiled":
            b1 = results[label][1][0]
            b8 = results[label][8][0]
            part.numbers(**{f"{dtype}_compiled_b1_vs_b8_agreement": _agreement(b1, b8)})
    e1, e8 = base[1][0], base[8][0]
    name = f"{dtype}: stream 0 alone == in a batch of 8 (eager)"
    if (e1 == e8).all():
        part.check(name, "pass", f"{frames} frames identical")
    else:
        status = "fail" if dtype == "float32" else "info"
        part.check(name, status, f"agreement {_agreement(e1, e8):.3f} (batch 8 runs other GEMM kernels)")


def check_streaming_audio(part: Part, frames: int) -> None:
    import numpy as np
    import torch

    from csm_runtime.engine.types import GenerationParams

    gen = _gen("tiny-random", "float32", max_streams=2, max_seq_len=256, mimi_weights="random")  # full-size Mimi
    chunks = list(gen.stream(TEXTS[2], 0, (), GenerationParams(max_audio_ms=frames * 80, greedy=True)))
    codes = np.concatenate([c.codes for c in chunks])
    pcm = np.concatenate([c.pcm for c in chunks])
    ref = gen.codec.decode_oneshot(torch.from_numpy(codes.T.copy()))
    err = float(np.abs(pcm - ref).max())
    name = f"streaming Mimi audio == one-shot decode ({device_name()}, full-size Mimi, {frames} frames)"
    part.check(name, "pass" if err <= 1e-4 else "fail", f"max abs difference {err:.2e} (limit 1e-4)", max_abs=err)
    gen.close()


def check_join(part: Part, frames: int) -> None:
    """A stream joining a running batch (with the serving path's switches: graphs on CUDA) equals it alone."""
    import numpy as np
    import torch

    from csm_runtime.engine.types import GenerationParams

    cuda = device_name() == "cuda"
    gen = _gen("tiny-random", "float32", max_streams=4, max_seq_len=256, cuda_graphs=cuda)
    alone = gen.frame_codes(TEXTS[1], speaker=0, frames=frames)
    alone_pcm = gen.codec.decode_oneshot(torch.from_numpy(alone.T.copy()))
    params = GenerationParams(max_audio_ms=(frames + 6) * 80, greedy=True)
    first = gen.add_stream(TEXTS[0], 1, (), params)
    for _ in range(3):
        gen.step()
    sid = gen.add_stream(TEXTS[1], 0, (), GenerationParams(max_audio_ms=frames * 80, greedy=True))
    codes, pcm = [], []
    while sid in gen._streams:
        for ev in gen.step():
            if ev.stream_id == sid and ev.chunk is not None:
                codes.append(ev.chunk.codes)
                pcm.append(ev.chunk.pcm)
    gen.cancel(first)
    gen.step()
    codes, pcm = np.concatenate(codes), np.concatenate(pcm)
    err = float(np.abs(pcm - alone_pcm).max())
    ok = np.array_equal(codes, alone) and err <= 1e-4
    name = f"float32 stream joining a running batch == alone ({'CUDA graphs' if cuda else 'eager'})"
    part.check(
        name, "pass" if ok else "fail", f"codes agreement {_agreement(codes, alone):.3f}, audio max diff {err:.2e}"
    )
    gen.close()


def part_correctness(work: Path) -> None:
    import torch

    part = Part("correctness", work)
    # Comparisons, not speed: no TF32 (cuDNN's default for convolutions would round Mimi's float32 to 10 bits)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    frames = 6 if DRY else 24
    guarded(part, "tiny-random == transformers generate", check_hf_equal, part, "tiny-random", frames)
    if DRY:
        part.check("csm-1b-random == transformers generate", "skipped", "dry run: tiny-random only")
    else:
        guarded(part, "csm-1b-random == transformers generate", check_hf_equal, part, "csm-1b-random", 3)
    guarded(part, "float32 modes", check_modes, part, "float32", frames)
    guarded(part, "bfloat16 modes", check_modes, part, "bfloat16", frames)
    guarded(part, "streaming audio", check_streaming_audio, part, 4 if DRY else 10)
    guarded(part, "join", check_join, part, 4 if DRY else 12)
    part.finish()


# ---- b. benchmark ---------------------------------------------------------------------------------------------------
def part_bench(work: Path) -> None:
    import bench_generator as bg

    part = Part("bench", work)
    device = device_name()
    model = "tiny-random" if DRY else "csm-1b-random"
    dtype = "float32" if DRY else "bfloat16"
    batches = (1, 2) if DRY else (1, 8, 32, 64)
    frames = 3 if DRY else 24
    rows: list[dict] = []

    def keep(row: dict) -> None:
        rows.append(row)
        part.numbers(rows=rows)
        print(f"[bench] {json.dumps(row)}", flush=True)

    guarded(part, "transformers generate", lambda: keep(bg.hf_generate_row(model, dtype, device, 2 if DRY else 16)))
    settings = [("off", False), ("default", False), ("off", True), ("default", True)]
    for compile_mode, graphs in settings:
        label = f"compile {compile_mode}, graphs {'on' if graphs else 'off'}"
        if graphs and device != "cuda":
            part.check(label, "skipped", "CUDA graphs need a CUDA device" + (" (dry run)" if DRY else ""))
            continue
        if DRY and compile_mode != "off":
            part.check(label, "skipped", "dry run: inductor compiles take minutes on this CPU")
            continue
        result = guarded(part, label, bg.grid_rows, model, dtype, device, compile_mode, graphs, batches, frames, keep)
        if result is not None:
            part.check(label, "pass", f"{len(result)} batch sizes measured")
    hf = next((r for r in rows if r.get("impl") == "hf-generate"), None)
    ours = [r for r in rows if r.get("batch") == 1 and r.get("impl") == "ours"]
    if hf and ours:
        best = min(ours, key=lambda r: r["ms_per_frame"])
        part.numbers(hf_vs_ours_b1=round(hf["ms_per_frame"] / best["ms_per_frame"], 3), best_b1=best["setting"])
    realtime = [r["batch"] for r in rows if r.get("impl") == "ours" and r.get("rtf", 9) < 1.0]
    part.numbers(max_realtime_batch=max(realtime) if realtime else 0)
    part.finish()


# ---- c. autotune ----------------------------------------------------------------------------------------------------
def part_autotune(work: Path) -> None:
    part = Part("autotune", work)
    out = work / "profiles"
    cmd = [sys.executable, "-m", "csm_runtime", "autotune", "--quick", "--out", str(out), "--json"]
    if DRY:
        cmd += [
            "--model",
            "tiny-random",
            "--device",
            "cpu",
            "--cpu-threads",
            "1",
            "--compile",
            "off",
            "--batches",
            "1,2",
            "--warmup-frames",
            "1",
            "--timed-frames",
            "3",
            "--rounds",
            "2",
            "--check-rounds",
            "1",
            "--check-frames",
            "6",
            "--check-tolerance",
            "1000",
        ]
    else:
        cmd += ["--model", "csm-1b-random", "--device", "cuda", "--rounds", "2"]
        slow = _slow_compile(work)
        if slow:
            cmd += ["--compile", "off"]
            why = "the bench finished no compiled row" if slow == float("inf") else f"its warm-up took {slow:.0f} s"
            part.check("compile modes", "info", f"compile default left out of the sweep: {why} in the bench")
    part.numbers(command=" ".join(cmd))
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    sys.stderr.write(proc.stderr[-6000:])
    part.numbers(exit_code=proc.returncode, wall_s=round(time.perf_counter() - t0, 1))
    summary = None
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            summary = json.loads(line)
            break
    if proc.returncode != 0 or summary is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        part.check("autotune --quick", "fail", f"exit {proc.returncode}: {tail}"[:500])
        rejected = list(out.glob("*.rejected.yaml"))
        if rejected:
            part.numbers(rejected_profile=str(rejected[0]))
        part.finish()
        return
    part.numbers(summary=summary)
    part.check(
        "autotune --quick",
        "pass",
        f"chose {summary['chosen']} ({summary['settings']['max_streams']} "
        f"stream(s), realtime {summary['realtime']}) -> {Path(summary['profile']).name}",
    )
    d = summary.get("delivery")
    if d is None:
        part.check("delivery check", "fail", "the profile has no delivery block")
    elif DRY:
        part.check(
            "delivery check",
            "info",
            f"ran (tolerance widened for the dry run): RTF {d['predicted_rtf']:.3f} "
            f"-> {d['delivered_rtf']:.3f}, TTFA {d['predicted_ttfa_ms']:.0f} -> {d['delivered_ttfa_ms']:.0f} ms",
        )
    else:
        part.check(
            "delivery check",
            "pass" if d["ok"] else "fail",
            f"RTF {d['predicted_rtf']:.3f} -> "
            f"{d['delivered_rtf']:.3f}, TTFA {d['predicted_ttfa_ms']:.0f} -> {d['delivered_ttfa_ms']:.0f} ms",
        )
    part.finish()


def _slow_compile(work: Path, limit_s: float = 90.0) -> float | None:
    """The bench's compile-default warm-up time when it passed `limit_s` (or the bench never finished one)."""
    path = work / "bench.json"
    if not path.exists():
        return None
    rows = json.loads(path.read_text()).get("numbers", {}).get("rows") or []
    compiled = [r for r in rows if r.get("impl") == "ours" and "compile default" in r.get("setting", "")]
    if not compiled:
        return float("inf")
    took = (compiled[0].get("compile_s") or 0) + (compiled[0].get("prepare_s") or 0)
    return took if took > limit_s else None


# ---- d. summary -----------------------------------------------------------------------------------------------------
def part_summary(work: Path, out: Path) -> int:
    """Merge the parts into OUT/results.json and OUT/summary.md (one table); copy the profile and its plot."""
    limits = json.loads((work / "limits.json").read_text()) if (work / "limits.json").exists() else {}
    exits = json.loads((work / "exits.json").read_text()) if (work / "exits.json").exists() else {}
    parts = {}
    for name in PARTS:
        path = work / f"{name}.json"
        data = json.loads(path.read_text()) if path.exists() else {"part": name, "status": "error", "checks": []}
        rc = exits.get(name)
        if rc in (124, 137):
            data["status"] = "timeout"
            data.setdefault("checks", []).append(
                {"name": "time limit", "status": "fail", "detail": f"killed after {limits.get(name, '?')} s"}
            )
        elif rc not in (None, 0) and data.get("status") in ("running", "pass"):
            data["status"] = "error"
            data.setdefault("checks", []).append({"name": "exit", "status": "error", "detail": f"exit code {rc}"})
        parts[name] = data
    copied = []
    for path in sorted((work / "profiles").glob("*")) if (work / "profiles").is_dir() else []:
        if path.suffix in (".yaml", ".png") and not path.name.startswith("."):
            shutil.copy(path, out / path.name)
            copied.append(path.name)
    results = {"dry_run": DRY, "parts": parts, "files": copied, "limits_s": limits}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "summary.md").write_text(render_summary(parts, copied, limits))
    print((out / "summary.md").read_text())
    return 0 if all(p.get("status") in ("pass", "skipped") for p in parts.values()) else 1


def _cell(text) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def render_summary(parts: dict, copied: list[str], limits: dict) -> str:
    env = parts.get("env", {}).get("numbers", {})
    versions = env.get("versions", {})
    head = [
        f"# GPU check{' (CPU dry run)' if DRY else ''}",
        "",
        f"Device: {env.get('gpu', 'cpu')}; torch {versions.get('torch', '?')} (CUDA {env.get('torch_cuda')}); "
        f"transformers {versions.get('transformers', '?')}; moshi {versions.get('moshi', '?')}; "
        f"python {versions.get('python', '?')}; load average {env.get('load_avg')}",
        "",
        "| part | status | time s (limit) | result |",
        "|---|---|---|---|",
    ]
    lines = []
    for name, data in parts.items():
        checks = data.get("checks", [])
        counts = {}
        for c in checks:
            counts[c["status"]] = counts.get(c["status"], 0) + 1
        tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        head.append(
            f"| {name} | {data.get('status')} | {data.get('duration_s', '-')} ({limits.get(name, '-')}) | {tally} |"
        )
        lines += [f"## {name}: {data.get('status')}", ""]
        lines += [f"- **{c['status']}** {_cell(c['name'])}: {_cell(c.get('detail', ''))}" for c in checks]
        lines.append("")
    bench = parts.get("bench", {}).get("numbers", {})
    rows = bench.get("rows") or []
    if rows:
        lines += [
            "## Generator benchmark",
            "",
            "| impl | setting | batch | ms/frame | RTF | TTFA ms | codec ms | compile s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r.get('impl')} | {r.get('setting', '-')} | {r.get('batch', 1)} | {_num(r.get('ms_per_frame'))} | "
                f"{_num(r.get('rtf'), 3)} | {_num(r.get('ttfa_ms'))} | {_num(r.get('codec_ms'))} | "
                f"{_num(r.get('compile_s'))} |"
            )
        if "hf_vs_ours_b1" in bench:
            lines += [
                "",
                f"transformers `generate` / ours (best at batch 1, {bench.get('best_b1')}): "
                f"{bench['hf_vs_ours_b1']}x; most streams each faster than real time: "
                f"{bench.get('max_realtime_batch')}",
            ]
        lines.append("")
    if copied:
        lines += ["Files: " + ", ".join(copied), ""]
    return "\n".join(head + [""] + lines)


def _num(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=[*PARTS, "summary"])
    ap.add_argument("--work", required=True)
    ap.add_argument("--out")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.part == "summary":
        out = Path(args.out or work)
        out.mkdir(parents=True, exist_ok=True)
        return part_summary(work, out)
    {"env": part_env, "correctness": part_correctness, "bench": part_bench, "autotune": part_autotune}[args.part](work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
