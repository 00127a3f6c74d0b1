"""The GPU check's correctness checks: greedy codes against transformers `generate`, each execution mode against its
twin (eager, CUDA-graph replay, compiled), batch of 1 against batch of 8, streaming audio against a one-shot decode,
a stream joining a running batch against the same stream alone. The parts (gpu_check_parts.py) pick which to run."""

from __future__ import annotations

import statistics

from gpu_check_record import TEXTS, Part, device_name

# label -> (compile mode, CUDA graphs)
MODES = {
    "eager": ("off", False),
    "eager+graphs": ("off", True),
    "compiled": ("default", False),
    "compiled+graphs": ("default", True),
}


def _gen(model: str, dtype: str, **kw):
    from csm_runtime.engine.loader import load_generator

    return load_generator(model, device=device_name(), dtype=dtype, **kw)


def batch_codes(gen, texts, frames: int):
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


def agreement(a, b) -> float:
    """The fraction of identical codes over the frames both have."""
    n = min(len(a), len(b))
    return float((a[:n] == b[:n]).mean()) if n else 0.0


def first_diff(a, b) -> int | None:
    for i in range(min(len(a), len(b))):
        if (a[i] != b[i]).any():
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def batch_status(device: str, dtype: str, identical: bool) -> str:
    """Batch of 1 against batch of 8: on CUDA the GEMM kernels differ by batch size, so the agreement is a figure
    (info), never a failure; exact equality is a CPU test, for float32 (bf16 rounding may differ there too)."""
    if device == "cuda":
        return "info"
    if identical:
        return "pass"
    return "fail" if dtype == "float32" else "info"


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
        part.check(name, "fail", f"first differing frame {first_diff(ours, ref)}, agreement {agreement(ours, ref):.3f}")
    gen.close()


def mode_codes(dtype: str, frames: int, labels: tuple[str, ...]) -> dict[str, dict[int, list]]:
    """Greedy codes of the same texts at batch 1 and 8 in each mode (tiny-random). Graphs are captured lazily, only
    for the buckets these batches meet; compiled code carries over from compiled to compiled+graphs."""
    import torch

    torch._dynamo.reset()
    results: dict[str, dict[int, list]] = {}
    for label in labels:
        compile_mode, graphs = MODES[label]
        gen = _gen("tiny-random", dtype, max_streams=8, max_seq_len=256, compile=compile_mode, cuda_graphs=graphs)
        results[label] = {1: batch_codes(gen, TEXTS[:1], frames), 8: batch_codes(gen, TEXTS, frames)}
        gen.close()
    return results


def compare_modes(part: Part, dtype: str, frames: int, results: dict, label: str, twin: str) -> None:
    """`label` against `twin` at batch 1 and 8: identical, or (bf16 compiled against eager only) a figure."""
    for batch in (1, 8):
        got, ref = results[label][batch], results[twin][batch]
        agree = statistics.fmean(agreement(a, b) for a, b in zip(got, ref, strict=True))
        same = all(a.shape == b.shape and (a == b).all() for a, b in zip(got, ref, strict=True))
        name = f"{dtype} batch {batch}: {label} == {twin}"
        if same:
            part.check(name, "pass", f"{len(got)} stream(s) x {frames} frames identical")
        elif dtype == "bfloat16" and (label, twin) == ("compiled", "eager"):
            # inductor fuses bf16 ops (fp32 accumulation inside a kernel): greedy argmax can flip on near-ties
            part.check(
                name, "info", f"codes agreement {agree:.3f} (bf16 rounding differs between kernels)", agreement=agree
            )
        else:
            part.check(name, "fail", f"codes agreement {agree:.3f}", agreement=agree)


def check_batch_agreement(part: Part, dtype: str, frames: int, results: dict, label: str) -> None:
    """Stream 0 alone against the same stream in a batch of 8, in one mode."""
    one, eight = results[label][1][0], results[label][8][0]
    identical = one.shape == eight.shape and bool((one == eight).all())
    value = agreement(one, eight)
    status = batch_status(device_name(), dtype, identical)
    detail = f"agreement {value:.3f}" + (" (batch 8 runs other GEMM kernels)" if status == "info" else "")
    part.check(f"{dtype}: stream 0 alone == in a batch of 8 ({label})", status, detail, agreement=value)
    part.numbers(**{f"{dtype}_{label}_b1_vs_b8_agreement": value})


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


def check_join(part: Part, frames: int, graphs: bool) -> None:
    """A stream joining a running batch equals the same stream alone, codes and audio (float32)."""
    import numpy as np
    import torch

    from csm_runtime.engine.types import GenerationParams

    gen = _gen("tiny-random", "float32", max_streams=4, max_seq_len=256, cuda_graphs=graphs)
    alone = gen.frame_codes(TEXTS[1], speaker=0, frames=frames)
    alone_pcm = gen.codec.decode_oneshot(torch.from_numpy(alone.T.copy()))
    first = gen.add_stream(TEXTS[0], 1, (), GenerationParams(max_audio_ms=(frames + 6) * 80, greedy=True))
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
    name = f"float32 stream joining a running batch == alone ({'CUDA graphs' if graphs else 'eager'})"
    part.check(
        name, "pass" if ok else "fail", f"codes agreement {agreement(codes, alone):.3f}, audio max diff {err:.2e}"
    )
    gen.close()
