"""Long text: a 4096-character input streamed to the end, its RTF and the longest gap between two audio chunks, and
time to first audio (TTFA) for inputs of growing length.

Starts uvicorn in this process (real sockets, the real StreamingGenerator). The text is split into sentences and
each is generated with the previous ones as context; random weights never end a sentence themselves, so every
sentence is given `--piece-ms` of audio (the real model ends each with its end-of-speech frame). A gap is the wall
time between two chunks reaching the client; one chunk is `chunk_frames` x 80 ms of audio, and a gap longer than
that, while audio is already queued in the player, is what a listener could hear. Table on stdout, JSON in
bench/results/longtext.json.

    python bench/bench_longtext.py                     # tiny-random, 2 s per sentence
    python bench/bench_longtext.py --model csm-1b-random --device cuda --piece-ms 4000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from csm_runtime.engine import longtext
from csm_runtime.engine.sentences import speech_pieces
from csm_runtime.server import create_app
from csm_runtime.settings import RuntimeSettings

RESULTS = Path(__file__).resolve().parent / "results" / "longtext.json"
SENTENCES = (
    "The lighthouse keeper climbed the stairs at dusk, as he had done every evening for thirty years.",
    "Below him, the sea was calm, and the fishing boats came home one by one.",
    "He lit the lamp, wound the clockwork, and wrote the time in the log: 6.42 p.m., wind from the west.",
    "Mr. Hale, the harbour master, waved from the pier; the keeper waved back.",
    "Then he sat down with his tea and waited for the night to begin.",
)


def text_of(length: int) -> str:
    out, i = "", 0
    while len(out) < length:
        out += SENTENCES[i % len(SENTENCES)] + " "
        i += 1
    return out[:length].rsplit(" ", 1)[0] + "." if len(out) > length else out.strip()


def stream(url: str, text: str, first_only: bool = False) -> dict:
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}
    start = time.perf_counter()
    arrivals, sizes = [], []
    with httpx.stream("POST", url + "/v1/audio/speech", json=body, timeout=3600) as r:
        r.raise_for_status()
        for data in r.iter_raw():
            if data:
                arrivals.append(time.perf_counter() - start)
                sizes.append(len(data))
                if first_only:
                    break
    return {"arrivals": arrivals, "sizes": sizes, "wall_s": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--piece-ms", type=int, default=2000, help="audio per sentence (random weights never end one)")
    ap.add_argument("--cpu-threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3, help="TTFA runs per length")
    ap.add_argument("--port", type=int, default=8766)
    args = ap.parse_args()
    longtext.PIECE_BASE_MS, longtext.PIECE_MS_PER_CHAR = args.piece_ms, 0
    settings = RuntimeSettings(
        model=args.model,
        device=args.device,
        max_streams=2,
        cpu_threads=args.cpu_threads,
        max_audio_ms=600_000,
        request_timeout_s=3600,  # the timeout covers the whole text; a slow CPU needs more than the default 300 s
    )
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=args.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{args.port}"
    while True:
        try:
            if httpx.get(url + "/ready", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    load_before = os.getloadavg()
    ttfa = {}
    for length in (100, 1000, 4096):
        runs = [stream(url, text_of(length), first_only=True)["arrivals"][0] for _ in range(args.runs)]
        ttfa[length] = round(statistics.median(runs), 3)
    text = text_of(4096)
    pieces = speech_pieces(text)
    full = stream(url, text)
    server.should_exit = True
    thread.join(30)
    audio_s = sum(full["sizes"]) / 2 / 24_000
    gaps = [b - a for a, b in zip(full["arrivals"], full["arrivals"][1:], strict=False)]
    # Every sentence gets exactly piece_cap_frames of audio here, so a chunk that starts at a multiple of it is the
    # first chunk of a sentence: its gap is the hand-over from one sentence to the next.
    piece_bytes = longtext.piece_cap_frames("") * 1920 * 2
    starts = [sum(full["sizes"][:i]) for i in range(1, len(full["sizes"]))]
    handover = [g for g, at in zip(gaps, starts, strict=True) if at % piece_bytes == 0]
    inside = [g for g, at in zip(gaps, starts, strict=True) if at % piece_bytes]
    chunk_s = settings.chunk_frames * 0.08
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": platform.node(),
        "model": args.model,
        "device": args.device,
        "chars": len(text),
        "sentences": len(pieces),
        "piece_ms": args.piece_ms,
        "audio_s": round(audio_s, 2),
        "expected_audio_s": round(len(pieces) * longtext.piece_cap_frames("") * 0.08, 2),
        "wall_s": round(full["wall_s"], 2),
        "rtf": round(full["wall_s"] / audio_s, 3),
        "ttfa_s": round(full["arrivals"][0], 3),
        "chunks": len(full["arrivals"]),
        "gap_p50_s": round(statistics.median(gaps), 3),
        "gap_p95_s": round(sorted(gaps)[int(0.95 * (len(gaps) - 1))], 3),
        "gap_max_s": round(max(gaps), 3),
        "handover_gap_p50_s": round(statistics.median(handover), 3) if handover else None,
        "handover_gap_max_s": round(max(handover), 3) if handover else None,
        "inside_gap_p50_s": round(statistics.median(inside), 3) if inside else None,
        "inside_gap_max_s": round(max(inside), 3) if inside else None,
        "chunk_audio_s": chunk_s,
        "ttfa_by_length_s": ttfa,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:<22}{value}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
