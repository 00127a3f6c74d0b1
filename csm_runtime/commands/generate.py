"""`csm-runtime generate`: speak a text to a 24 kHz mono WAV and print frames, ms/frame, TTFA and RTF.

A long text (`--file`, or a long `--text`) is said as the server says it: split into sentences, each generated with
the previous ones as context (engine/longtext.py), `--max-ms` the total.

Usage (listed in cli.py):
    csm-runtime generate --model tiny-random --text "Hello there." -o out.wav
    csm-runtime generate --text "Hi" --greedy --max-ms 4000 --seed 1 -o hi.wav --json
    csm-runtime generate --file chapter.txt --max-ms 600000 -o chapter.wav
    csm-runtime generate --show-config
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from csm_runtime.settings import SettingsError, load_settings


def build_parser(parser=None):
    p = parser or argparse.ArgumentParser(prog="csm-runtime generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="tiny-random (default) | csm-1b-random | sesame/csm-1b | a local path")
    p.add_argument("--text", help="what to say")
    p.add_argument("--file", help="a UTF-8 text file to say (instead of --text); `-` reads stdin")
    p.add_argument("--speaker", type=int, default=0)
    p.add_argument("--max-ms", type=int, help="longest audio to generate (default: settings.max_audio_ms)")
    p.add_argument("--seed", type=int)
    p.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    p.add_argument("--temperature", type=float)
    p.add_argument("--topk", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--hf-token-file", help="file holding the Hub token for a gated checkpoint (default: HF_TOKEN)")
    p.add_argument("--dtype", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--compile", help="off | default | reduce-overhead | max-autotune-no-cudagraphs")
    p.add_argument("--config", help="YAML file of settings (applied before env and options)")
    p.add_argument("-o", "--output", default="out.wav", help="WAV file to write (default out.wav)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--show-config", action="store_true", help="print the resolved settings and exit")
    return p


def main(argv: list[str] | None = None, args=None) -> int:
    args = args if args is not None else build_parser().parse_args(argv)
    cli = {"model": args.model, "device": args.device, "dtype": args.dtype, "compile": args.compile}
    cli["hf_token_file"] = args.hf_token_file
    try:
        settings = load_settings(args.config, **cli)
    except (SettingsError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if args.model is None and "CSM_MODEL" not in os.environ and not args.config:
        settings = settings.replace(model="tiny-random")  # the command's default: runs anywhere, offline
    if args.show_config:
        print(json.dumps(settings.as_dict(), indent=2))
        return 0
    try:
        return _generate(settings, args)
    except (ValueError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2


def _generate(settings, args) -> int:
    # The engine (torch, transformers, moshi) loads only to generate: `--help` and `--show-config` stay fast.
    import numpy as np
    import soundfile

    from csm_runtime.engine.loader import load_generator
    from csm_runtime.engine.longtext import Utterance, limits_of
    from csm_runtime.engine.sentences import speech_pieces
    from csm_runtime.engine.types import GenerationParams

    text = _read_text(args)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("csm_runtime.download").setLevel(logging.INFO)  # a first run's download shows its progress
    params = GenerationParams(
        max_audio_ms=args.max_ms if args.max_ms is not None else settings.max_audio_ms,
        temperature=args.temperature if args.temperature is not None else settings.temperature,
        topk=args.topk if args.topk is not None else settings.topk,
        greedy=args.greedy,
        seed=args.seed,
        first_chunk_frames=settings.first_chunk_frames,
        chunk_frames=settings.chunk_frames,
    )
    params.validate()
    gen = load_generator(settings=settings.replace(max_streams=1))
    utterance = Utterance(speech_pieces(text), args.speaker, (), params, limits_of(gen))
    parts, ttfa_s, t0 = [], None, time.perf_counter()
    while (piece := utterance.next()) is not None:
        for chunk in gen.stream(piece.text, args.speaker, piece.context, piece.params):
            if ttfa_s is None and len(chunk.pcm):
                ttfa_s = time.perf_counter() - t0
            utterance.add_audio(chunk.pcm)
            parts.append(chunk.pcm)
        utterance.piece_done()
    wall = time.perf_counter() - t0
    pcm = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    soundfile.write(args.output, pcm, gen.sample_rate, subtype="FLOAT")
    frames = len(pcm) // gen.frame_samples
    audio_s = len(pcm) / gen.sample_rate
    report = {
        "output": args.output,
        "model": gen.model_id,
        "pieces": utterance.index,
        "frames": frames,
        "audio_s": round(audio_s, 3),
        "ms_per_frame": round(wall * 1000 / max(frames, 1), 2),
        "ttfa_ms": round(ttfa_s * 1000, 1) if ttfa_s is not None else None,
        "rtf": round(wall / audio_s, 3) if audio_s else None,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"wrote {report['output']}: {report['pieces']} sentence(s), {report['frames']} frames ({report['audio_s']} s), "
            f"{report['ms_per_frame']} ms/frame, TTFA {report['ttfa_ms']} ms, RTF {report['rtf']}"
        )
    return 0


def _read_text(args) -> str:
    """--text or --file (`-`: stdin); one of them, with something to say in it."""
    from csm_runtime.engine.sentences import is_speakable

    if args.text is not None and args.file:
        raise ValueError("give --text or --file, not both")
    if args.file:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    else:
        text = args.text or ""
    if not is_speakable(text):
        raise ValueError("--text or --file is required and must contain something to say")
    return text


if __name__ == "__main__":
    sys.exit(main())
