"""One request's pieces said in order, each generated with the pieces before it as context (text + audio).

`Utterance` is the plan the scheduler (and `csm-runtime generate`) follows: `next()` names the next piece, the context
it gets and its frame budget; the caller feeds the piece's audio back with `add_audio()` and says `piece_done()`
when the generator ended it. It holds no model and loads no torch, so its arithmetic is tested on its own.

Budgets, in 80 ms frames:
- the request's `max_audio_ms` is the total across pieces;
- a piece of a multi-piece text may take at most PIECE_BASE_MS + PIECE_MS_PER_CHAR per character: a safety net for a
  model that never ends its speech (random weights); CSM ends a sentence with its end-of-speech frame long before;
- a piece, its context and its frames fit the KV cache (`max_seq_len` rows): the piece's own frames come first, the
  context fills what is left, newest first, up to CONTEXT_PIECES pieces and `max_context_frames` audio frames (the
  voice's reference clip first of all): enough for the voice to carry on, and a prefill that stays short;
- only the pieces that can still be context are kept in memory, so a long text costs no more memory than a short one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from csm_runtime.engine.types import GenerationParams, Segment

FRAME_MS = 80
FRAME_SAMPLES = 1920
PIECE_BASE_MS = 2000
PIECE_MS_PER_CHAR = 100
CONTEXT_PIECES = 2


class PieceTooLongError(ValueError):
    """A piece that cannot fit the KV cache even without context."""


@dataclass(frozen=True)
class Limits:
    """What the generator can hold: `max_seq_len=None` means no cache limit (a test fake)."""

    max_seq_len: int | None = None
    max_context_frames: int = 400
    text_rows: Callable[[str, int], int] | None = None  # prompt rows of one text segment


@dataclass(frozen=True)
class Piece:
    """What to generate next: `params.max_audio_ms` is this piece's frame budget."""

    index: int
    text: str
    context: list
    params: GenerationParams


@dataclass
class _Spoken:
    text: str
    audio: np.ndarray
    frames: int


def piece_cap_frames(text: str) -> int:
    return math.ceil((PIECE_BASE_MS + PIECE_MS_PER_CHAR * len(text)) / FRAME_MS)


def _frames(audio) -> int:
    return math.ceil(len(audio) / FRAME_SAMPLES) if audio is not None else 0


def _segment_frames(seg: Segment) -> int:
    """Audio frames of a context segment: its stored codes' length (they win, as in prompt.py), else its audio's."""
    return int(seg.codes.shape[-1]) if seg.codes is not None else _frames(seg.audio)


def limits_of(generator) -> Limits:
    """The limits a StreamingGenerator has (its settings and tokenizer); none for an object without them."""
    settings = getattr(generator, "settings", None)
    prompt = getattr(generator, "prompt", None)
    rows = getattr(prompt, "text_rows", None)
    if settings is None:
        return Limits()
    return Limits(
        max_seq_len=getattr(settings, "max_seq_len", None),
        max_context_frames=getattr(settings, "max_context_frames", 400),
        text_rows=(lambda text, speaker: len(rows(text, speaker))) if rows else None,
    )


@dataclass
class Utterance:
    pieces: Sequence[str]
    speaker: int
    voice_context: Sequence[Segment]
    params: GenerationParams
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if isinstance(self.pieces, str):
            self.pieces = [self.pieces]
        self.total_frames = max(1, self.params.max_audio_ms // FRAME_MS)
        self.frames_done = 0
        self.index = 0  # the piece being generated (or next to be)
        self.reason = "eos"
        self._spoken: list[_Spoken] = []
        self._current: list[np.ndarray] = []
        self._voice = [(seg, _segment_frames(seg)) for seg in self.voice_context]

    @property
    def frames_left(self) -> int:
        return self.total_frames - self.frames_done

    def next(self) -> Piece | None:
        """The next piece to generate, or None when all were said or the audio budget is spent (see `reason`)."""
        if self.frames_left <= 0:
            self.reason = "max_audio"
            return None
        if self.index >= len(self.pieces):
            return None
        text = self.pieces[self.index]
        want = self.frames_left if len(self.pieces) == 1 else min(self.frames_left, piece_cap_frames(text))
        voice, voice_frames, voice_rows = self._voice_that_fits()
        room = None
        if self.limits.max_seq_len is not None and self.limits.text_rows is not None:
            room = self.limits.max_seq_len - self.limits.text_rows(text, self.speaker) - voice_rows
            if room < 1:
                raise PieceTooLongError(f"piece {self.index + 1} ({len(text)} characters) does not fit max_seq_len")
            want = min(want, room)
        context = voice + self._recent_context(self.limits.max_context_frames - voice_frames, room, want)
        seed = None if self.params.seed is None else self.params.seed + self.index
        params = dataclasses.replace(self.params, max_audio_ms=want * FRAME_MS, seed=seed)
        return Piece(self.index, text, context, params)

    def _voice_that_fits(self) -> tuple[list, int, int]:
        """The voice's reference segments, newest first while they fit max_context_frames (as prompt.py keeps)."""
        budget, kept, rows = self.limits.max_context_frames, [], 0
        for seg, frames in reversed(self._voice):
            n = frames + 1 if frames else 0
            if n > budget:
                break
            budget -= n
            kept.insert(0, seg)
            rows += n + self._text_rows(seg.text, seg.speaker)
        return kept, self.limits.max_context_frames - budget, rows

    def _text_rows(self, text: str, speaker: int) -> int:
        return self.limits.text_rows(text, speaker) if self.limits.text_rows else 0

    def _recent_context(self, frame_budget: int, room: int | None, want: int) -> list[Segment]:
        """The newest spoken pieces whose audio frames fit `frame_budget` and whose rows fit the cache's room."""
        rows_left = None if room is None else room - want
        kept: list[Segment] = []
        for spoken in reversed(self._spoken):
            n = spoken.frames + 1
            rows = n + self._text_rows(spoken.text, self.speaker)
            if len(kept) == CONTEXT_PIECES or n > frame_budget or (rows_left is not None and rows > rows_left):
                break
            frame_budget -= n
            if rows_left is not None:
                rows_left -= rows
            kept.insert(0, Segment(spoken.text, self.speaker, spoken.audio))
        return kept

    def add_audio(self, pcm: np.ndarray) -> None:
        """A chunk of the current piece (float32 PCM at 24 kHz, whole frames)."""
        if len(pcm):
            self._current.append(np.asarray(pcm, dtype=np.float32))
            self.frames_done += len(pcm) // FRAME_SAMPLES

    def piece_done(self) -> None:
        """The generator ended the current piece: it becomes context for the next ones."""
        audio = np.concatenate(self._current) if self._current else np.zeros(0, np.float32)
        self._current = []
        if len(audio):
            self._spoken.append(_Spoken(self.pieces[self.index], audio, _frames(audio)))
        self.index += 1
        self._forget_old()

    def _forget_old(self) -> None:
        """Drop pieces that can no longer be context (older than max_context_frames of newer audio)."""
        budget, keep = self.limits.max_context_frames, 0
        for spoken in reversed(self._spoken[-CONTEXT_PIECES:]):
            budget -= spoken.frames + 1
            if budget < 0:
                break
            keep += 1
        del self._spoken[: len(self._spoken) - keep]

    @property
    def finished(self) -> bool:
        return self.index >= len(self.pieces) or self.frames_left <= 0
