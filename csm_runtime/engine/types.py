"""Plain records the generator takes and yields; the server and scheduler code against these names.

Importing this module loads neither torch nor numpy (they appear only in annotations), so the server's request
handling can build `GenerationParams` without pulling in the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass
class Segment:
    """A context segment (text + speaker + its audio) or the request itself (no audio).

    A segment's audio is given either as a waveform (`audio`, encoded with Mimi when the prompt is built) or as the
    Mimi codes it was already encoded to (`codes`): stored voices and conversation turns carry codes, so a request
    never re-encodes them. When both are set, `codes` wins."""

    text: str
    speaker: int = 0
    audio: torch.Tensor | None = None  # float32 mono 24 kHz, for context segments
    codes: torch.Tensor | np.ndarray | None = None  # [32, T] int Mimi codes of the segment's audio


@dataclass
class GenerationParams:
    max_audio_ms: int = 20_000
    temperature: float = 0.9
    topk: int = 50
    greedy: bool = False
    seed: int | None = None
    first_chunk_frames: int = 2
    chunk_frames: int = 4

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not isinstance(self.max_audio_ms, int) or self.max_audio_ms < 80:
            raise ValueError(f"max_audio_ms must be an integer >= 80 (one frame), got {self.max_audio_ms!r}")
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling (or set greedy), got {self.temperature!r}")
        if not isinstance(self.topk, int) or self.topk < 1:
            raise ValueError(f"topk must be an integer >= 1, got {self.topk!r}")
        for name in ("first_chunk_frames", "chunk_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {self.seed!r}")


@dataclass
class ChunkMetrics:
    frames_total: int  # frames of audio emitted so far by this stream
    ms_per_frame: float  # decode wall time per frame since prefill ended
    ttfa_ms: float | None  # request start (add_stream) -> first chunk ready
    rtf: float  # wall time since request start / audio seconds so far (< 1 is faster than real time)
    elapsed_s: float


@dataclass
class AudioChunk:
    pcm: np.ndarray  # float32 mono 24 kHz, 1920 samples per frame
    index: int  # 0, 1, 2, ...
    frames: int  # frames in this chunk
    is_last: bool
    metrics: ChunkMetrics
    codes: np.ndarray | None = None  # [frames, 32] int64 CSM codes of this chunk


@dataclass
class StreamEvent:
    stream_id: int
    chunk: AudioChunk | None
    finished: bool
    reason: str | None  # 'eos' | 'max_audio' | 'cancelled' (None while running)
