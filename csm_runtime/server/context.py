"""A speech request's context: the voice's reference clip first, then the conversation's earlier turns, then the
request's own `context` items (oldest first), cut to what the model can hold.

The voice's reference segment(s) always come first and are kept whenever they fit, so every request in that voice
starts with the same prompt prefix (the engine can reuse its prefill). The turns and items after it are kept newest
first while their audio fits the context budget (`max_context_frames`, each segment with audio costing its frames
+ 1 for its end frame, as engine/prompt.py counts them) and their rows leave the request's audio its room in the KV
cache (`max_seq_len`): context is dropped before the audio is shortened. A request whose voice reference and text
leave no room for a single frame is refused (400 `context_too_long`) before any stream opens.

Stored codes (a voice's clip, a conversation's turns) are used as they are. A client's clip (`audio` in an item) is
decoded off the event loop and encoded with Mimi once, on the engine thread, and only when it is kept.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from csm_runtime.engine.longtext import Limits, piece_cap_frames
from csm_runtime.engine.sentences import clean
from csm_runtime.engine.types import GenerationParams, Segment
from csm_runtime.server.clips import FRAME_SAMPLES, SAMPLE_RATE, ClipError, decode_base64_clip, encode_clip
from csm_runtime.server.errors import APIError

FRAME_MS = 80
CLIP_MIN_S = FRAME_SAMPLES / SAMPLE_RATE  # one frame: a turn may be a short "yes"
CLIP_MAX_S = 30.0


@dataclass
class Part:
    """A context segment before the prompt: `frames` of audio (0: text only); `wav` a client's decoded clip still
    to encode (its segment has no audio yet)."""

    segment: Segment
    frames: int
    wav: np.ndarray | None = None


def segment_frames(seg: Segment) -> int:
    """Audio frames a segment puts in the prompt (its stored codes win over its waveform, as in prompt.py)."""
    if seg.codes is not None:
        return int(seg.codes.shape[-1])
    return math.ceil(len(seg.audio) / FRAME_SAMPLES) if seg.audio is not None else 0


def parts(segments: Sequence[Segment]) -> list[Part]:
    return [Part(seg, segment_frames(seg)) for seg in segments]


def turn_parts(turns) -> list[Part]:
    """A conversation's turns (conversations.Turn) as context: their text, speaker and stored codes."""
    return [Part(Segment(t.text, t.speaker, codes=t.codes), t.frames) for t in turns]


def audio_budget(pieces: Sequence[str], params: GenerationParams) -> list[int]:
    """Frames each piece may take, as engine/longtext.py's Utterance plans them."""
    total = max(1, params.max_audio_ms // FRAME_MS)
    return [total if len(pieces) == 1 else min(total, piece_cap_frames(p)) for p in pieces]


def fit(
    voice: list[Part],
    history: list[Part],
    pieces: Sequence[str],
    speaker: int,
    params: GenerationParams,
    limits: Limits,
) -> list[Part]:
    """The context kept: the voice's parts that fit the frame budget, then the newest history parts that fit what
    is left of it and of the KV cache. Raises APIError 400 `context_too_long` when the request alone cannot fit."""
    text_rows = limits.text_rows

    def rows(part: Part) -> int:
        audio = part.frames + 1 if part.frames else 0
        return audio + (text_rows(part.segment.text, part.segment.speaker) if text_rows else 0)

    frames_left = limits.max_context_frames
    kept_voice: list[Part] = []
    for part in reversed(voice):  # newest first, as the engine keeps them
        n = part.frames + 1 if part.frames else 0
        if n > frames_left:
            break
        frames_left -= n
        kept_voice.insert(0, part)

    room = None
    if limits.max_seq_len is not None and text_rows is not None:
        voice_rows = sum(rows(p) for p in kept_voice)
        room = limits.max_seq_len
        for piece, frames in zip(pieces, audio_budget(pieces, params), strict=True):
            left = limits.max_seq_len - voice_rows - text_rows(piece, speaker)
            if left < 1:
                raise APIError(
                    400,
                    f"the request does not fit the model's context ({limits.max_seq_len} positions): its text takes "
                    f"{text_rows(piece, speaker)} and the voice's reference clip {voice_rows}, leaving no room for "
                    f"audio; shorten the text",
                    param="input",
                    code="context_too_long",
                )
            room = min(room, max(0, left - frames))

    kept: list[Part] = []
    for part in reversed(history):  # newest first; the first that does not fit ends the kept run
        n = part.frames + 1 if part.frames else 0
        r = rows(part) if room is not None else 0
        if n > frames_left or (room is not None and r > room):
            break
        frames_left -= n
        if room is not None:
            room -= r
        kept.insert(0, part)
    return kept_voice + kept


async def request_parts(items, voices: dict) -> list[Part]:
    """The request's `context` items as parts: a voice's reference segments (spoken as the item's speaker), a
    client's clip decoded (not yet encoded), or text only. Raises APIError 400 naming the bad item."""
    out: list[Part] = []
    for i, item in enumerate(items or ()):
        text = clean(item.text).strip()  # as the input is: invisible characters removed
        if item.voice is not None:
            voice = voices.get(item.voice)
            if voice is None:
                raise APIError(
                    400,
                    f"context item {i}: unknown voice {item.voice!r}",
                    param=f"context.{i}.voice",
                    code="voice_not_found",
                )
            segs = [replace(seg, speaker=item.speaker) for seg in voice.context]
            out.extend(parts(segs) if segs else [Part(Segment(text, item.speaker), 0)])
        elif item.audio is not None:
            try:
                wav = await asyncio.to_thread(decode_base64_clip, item.audio, min_s=CLIP_MIN_S, max_s=CLIP_MAX_S)
            except ClipError as exc:
                raise APIError(
                    exc.status, f"context item {i}: {exc.message}", param=f"context.{i}.audio", code=exc.code
                ) from None
            out.append(Part(Segment(text, item.speaker), len(wav) // FRAME_SAMPLES, wav))
        else:
            out.append(Part(Segment(text, item.speaker), 0))
    return out


async def encode_kept(scheduler, kept: list[Part]) -> list[Segment]:
    """The kept parts as segments, a client's clip encoded with Mimi now (once, on the engine thread)."""
    out = []
    for part in kept:
        if part.wav is None:
            out.append(part.segment)
        else:
            codes = await encode_clip(scheduler, part.wav)
            out.append(replace(part.segment, codes=codes))
    return out
