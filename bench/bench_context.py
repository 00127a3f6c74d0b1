"""Context benchmark: time to first audio with a 10 s reference voice, its prompt prefilled from scratch (cold) and
with its backbone KV reused (warm), next to the same request without context, in one run and one process.

Per model, each round times (a) no context, (b) the voice cold (the prefix cache emptied first: a full prefill of the
transcript and the clip's 125 frames) and (c) the same voice warm (its prefix copied from the cache); the medians and
the ratio (c)/(a) are printed (goal <= 1.5x). The greedy codes of (b) and (c) must be identical. At the real shape
(csm-1b-random) it also checks greedy codes with a stored-codes context (warm) equal transformers' `generate` on the
same rows, its own Mimi encoding the clip (the chat template itself is compared on the tiny model in
tests/unit/test_prompt_reference.py). Writes bench/results/context.json.

    .venv/bin/python bench/bench_context.py                          # tiny-random + csm-1b-random (float32, CPU)
    .venv/bin/python bench/bench_context.py --models tiny-random --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from csm_runtime.engine.codec import FRAME_SAMPLES, SAMPLE_RATE, trim_to_frames  # noqa: E402
from csm_runtime.engine.loader import load_generator  # noqa: E402
from csm_runtime.engine.types import GenerationParams, Segment  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs away."
TRANSCRIPT = (
    "This is my reference clip: ten seconds of my own voice, read slowly and clearly, so that the model can "
    "learn how I sound before it speaks for me."
)


def _clip(seconds: float, seed: int) -> np.ndarray:
    samples = int(seconds * SAMPLE_RATE) + FRAME_SAMPLES // 2  # a partial last frame, as uploads have
    return trim_to_frames((np.random.default_rng(seed).standard_normal(samples) * 0.1).astype(np.float32))


def _request(gen, context, frames: int) -> tuple[float, float, np.ndarray]:
    """TTFA (ms, request start -> first audio chunk of 2 frames, the server default), its prefill part (ms, request
    start -> the prompt in the cache: what context changes; the 2 frames after it are the same work either way) and
    the greedy codes."""
    params = GenerationParams(max_audio_ms=frames * 80, greedy=True, first_chunk_frames=2, chunk_frames=4)
    chunks = list(gen.stream(TEXT, 0, context, params))
    m = chunks[0].metrics
    return m.ttfa_ms, m.ttfa_ms - m.ms_per_frame * m.frames_total, np.concatenate([c.codes for c in chunks])


def _reference_equal(gen, frames: int) -> dict:
    """Greedy codes with a stored-codes voice (prefix cold, then warm) vs transformers' generate on the same rows."""
    from tests.fakes.runtime_fixtures import context_equals_transformers

    return context_equals_transformers(gen, frames, _clip(1.0, 7))


def run_model(model: str, args) -> dict:
    t0 = time.perf_counter()
    gen = load_generator(model, device="cpu", dtype=args.dtype, max_streams=1)
    build_s = time.perf_counter() - t0
    clip = _clip(args.voice_s, 0)
    t0 = time.perf_counter()
    voice = Segment(TRANSCRIPT, 1, codes=gen.codec.encode(clip).cpu().numpy())  # once, as an upload does
    encode_s = time.perf_counter() - t0
    rounds = args.rounds if model == "tiny-random" else args.real_rounds
    frames = args.frames
    _request(gen, (), frames)  # first-call costs (allocator, kernels) out of the timed rounds
    a, b, c, prefill, identical = [], [], [], {"none": [], "voice_cold": [], "voice_warm": []}, True
    for _ in range(rounds):
        ttfa, pre, _ = _request(gen, (), frames)
        a.append(ttfa)
        prefill["none"].append(pre)
        gen.prefix_cache.clear()
        ttfa, pre, cold = _request(gen, [voice], frames)
        b.append(ttfa)
        prefill["voice_cold"].append(pre)
        ttfa, pre, warm = _request(gen, [voice], frames)
        c.append(ttfa)
        prefill["voice_warm"].append(pre)
        identical &= bool(np.array_equal(cold, warm))
    med = [statistics.median(x) for x in (a, b, c)]
    paired = [round(w / n, 2) for w, n in zip(c, a, strict=True)]  # same round: the same load on this shared CPU
    row = {
        "model": model,
        "dtype": args.dtype,
        "build_s": round(build_s, 1),
        "voice_s": args.voice_s,
        "voice_frames": int(voice.codes.shape[1]),
        "voice_encode_s": round(encode_s, 2),
        "prompt_rows": {
            "none": len(gen.prompt.rows(TEXT, 0, ()).tokens),
            "voice": len(gen.prompt.rows(TEXT, 0, [voice]).tokens),
        },
        "rounds": rounds,
        "ttfa_ms": {"none": a, "voice_cold": b, "voice_warm": c},
        "ttfa_median_ms": {"none": round(med[0], 1), "voice_cold": round(med[1], 1), "voice_warm": round(med[2], 1)},
        "ratio_cold": round(med[1] / med[0], 2),
        "ratio_warm": round(med[2] / med[0], 2),
        "ratio_warm_per_round": paired,
        "prefill_ms": prefill,
        "prefill_median_ms": {k: round(statistics.median(v), 1) for k, v in prefill.items()},
        "goal_warm_ratio": 1.5,
        "greedy_codes_identical": identical,
        "prefix_stats": gen.prefix_stats(),
    }
    if model in args.reference_models.split(","):
        row["transformers_reference"] = _reference_equal(gen, args.reference_frames)
    gen.close()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny-random,csm-1b-random")
    ap.add_argument("--rounds", type=int, default=5, help="rounds for tiny-random")
    ap.add_argument("--real-rounds", type=int, default=4, help="rounds for csm-1b-random")
    ap.add_argument("--frames", type=int, default=4, help="frames per request (greedy)")
    ap.add_argument("--voice-s", type=float, default=10.0)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (this CPU is shared)")
    ap.add_argument("--reference-models", default="csm-1b-random", help="models checked against transformers")
    ap.add_argument("--reference-frames", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench/results/context.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'model':14} {'none ms':>9} {'cold ms':>9} {'warm ms':>9} {'cold/none':>9} {'warm/none':>9} identical")
    for model in args.models.split(","):
        r = run_model(model, args)
        rows.append(r)
        m = r["ttfa_median_ms"]
        print(
            f"{model:14} {m['none']:9.1f} {m['voice_cold']:9.1f} {m['voice_warm']:9.1f} "
            f"{r['ratio_cold']:9.2f} {r['ratio_warm']:9.2f} {r['greedy_codes_identical']}"
        )
        p = r["prefill_median_ms"]
        print(f"  prefill ms: none {p['none']:.1f}, cold {p['voice_cold']:.1f}, warm {p['voice_warm']:.1f}")
        if "transformers_reference" in r:
            print(f"  transformers generate: {r['transformers_reference']}")
    out = {
        "bench": "context",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "text": TEXT,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["greedy_codes_identical"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
