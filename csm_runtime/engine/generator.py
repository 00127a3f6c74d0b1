"""StreamingGenerator: CSM + Mimi as a static batch of `max_streams` rows, one frame per `step()`.

The scheduler (one thread) calls `add_stream` (prefill into the next free row), `step` (one frame for every active
stream, chunks out), `cancel`. `stream()` and `generate()` are the same engine driven for a single request, so
batching and single-stream share one code path. Not thread-safe: one thread owns a generator. Build one with
`load_generator` (loader.py).

Active streams always occupy rows 0..n-1 of the frame step's buffers (a stream that ends hands its row to the last
one), so a step runs over the smallest batch bucket that holds n and a lone stream does not pay for 64 rows. Each
stream keeps one Mimi decoder slot for its whole life (Mimi's streaming state cannot move between slots); the step
scatters the rows' codes into those slots.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from csm_runtime.engine.codec import FRAME_SAMPLES, SAMPLE_RATE, MimiCodec
from csm_runtime.engine.execution import FrameExecution
from csm_runtime.engine.frame import LENGTH_BUCKET_MIN, FrameModel, buckets
from csm_runtime.engine.model import LoadedModel
from csm_runtime.engine.prefix_cache import PrefixCache, prefix_keys
from csm_runtime.engine.prompt import PromptBuilder, PromptRows
from csm_runtime.engine.types import AudioChunk, ChunkMetrics, GenerationParams, Segment, StreamEvent
from csm_runtime.settings import RuntimeSettings

FRAME_MS = 1000 * FRAME_SAMPLES // SAMPLE_RATE  # 80


class BatchFullError(RuntimeError):
    """Every row of the static batch is busy; retry after a stream finishes."""


@dataclass
class _Stream:
    id: int
    row: int  # row of the frame step's buffers (changes when an earlier stream ends)
    slot: int  # Mimi decoder slot (fixed for the stream's life)
    params: GenerationParams
    max_frames: int
    t_start: float
    next_pos: int = 0  # backbone position the next frame writes (host copy of pos[row]: picks the length bucket)
    t_prefilled: float = 0.0
    frames: int = 0  # audio frames produced (EOS frame excluded)
    chunk_index: int = 0
    pending_pcm: list = field(default_factory=list)
    pending_codes: list = field(default_factory=list)
    ttfa_ms: float | None = None


class StreamingGenerator(FrameExecution):
    """Frame loop over a loaded CSM (see frame.py) with a Mimi streaming decoder per slot."""

    sample_rate = SAMPLE_RATE
    frame_samples = FRAME_SAMPLES

    def __init__(
        self, loaded: LoadedModel, codec: MimiCodec, settings: RuntimeSettings, device: torch.device, dtype: torch.dtype
    ):
        self.settings = settings
        self.device, self.dtype = device, dtype
        self.model_id = loaded.model_id
        self.loaded = loaded
        self.max_streams = settings.max_streams
        self.codec = codec
        self.frame = FrameModel(loaded, self.max_streams, settings.max_seq_len, device, dtype)
        self.prompt = PromptBuilder(loaded, codec, self.frame, settings.max_context_frames)
        self.prefix_cache = PrefixCache(settings.prefix_cache_mb * 2**20)
        cfg = loaded.config
        b = self.max_streams
        self.batch_buckets = buckets(b)
        self.length_buckets = buckets(settings.max_seq_len, min(LENGTH_BUCKET_MIN, settings.max_seq_len))
        # Per-row state the frame step reads and writes (static buffers: graph-capturable).
        self.hidden = torch.zeros(b, cfg.hidden_size, device=device, dtype=dtype)
        self.pos = torch.zeros(b, dtype=torch.long, device=device)
        self.temperature = torch.ones(b, device=device)
        self.topk = torch.ones(b, dtype=torch.long, device=device)
        self.greedy = torch.ones(b, dtype=torch.bool, device=device)
        self.seed = torch.zeros(b, dtype=torch.long, device=device)  # noise key: the stream's seed ...
        self.counter = torch.zeros(b, dtype=torch.long, device=device)  # ... and its frame number
        self._codec_codes = torch.zeros(b, cfg.num_codebooks, dtype=torch.long, device=device)  # per Mimi slot
        self._row_slots: torch.Tensor | None = None  # row -> Mimi slot of rows 0..n-1; None when rows changed
        self._streams: dict[int, _Stream] = {}
        self._rows: list[int] = []  # stream id per row, rows 0..n-1
        self._slots: list[int | None] = [None] * b  # stream id per Mimi slot
        self._ids = itertools.count(1)
        self._pending: list[StreamEvent] = []
        self._frame_step = None  # set by _setup_step (execution.py)
        self._graphs: dict[tuple[int, int, bool], tuple] = {}  # (batch, length, sampling) -> (graph, frame out)
        self.compile_mode = settings.compile
        self.cuda_graphs_reason: str | None = None
        self._setup_step()

    # ---- prompt ------------------------------------------------------------------------------------------------
    def build_prompt(self, text: str, speaker: int, context: Sequence[Segment]) -> torch.Tensor:
        """Embeddings [T, H] of context segments then the request text (see prompt.py)."""
        return self.prompt.build(text, speaker, context, self.device)

    # ---- batch engine ------------------------------------------------------------------------------------------
    def _params(self, params: GenerationParams | None) -> GenerationParams:
        s = self.settings
        if params is None:
            params = GenerationParams(
                max_audio_ms=s.max_audio_ms,
                temperature=s.temperature,
                topk=s.topk,
                first_chunk_frames=s.first_chunk_frames,
                chunk_frames=s.chunk_frames,
            )
        params.validate()
        if params.topk > self.loaded.config.vocab_size:
            raise ValueError(f"topk must be <= {self.loaded.config.vocab_size}, got {params.topk}")
        return params

    def add_stream(
        self, text: str, speaker: int = 0, context: Sequence[Segment] = (), params: GenerationParams | None = None
    ) -> int:
        """Prefill the next free row with the prompt; returns the stream id. Raises BatchFullError or ValueError."""
        t0 = time.perf_counter()
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text is empty")
        if not isinstance(speaker, int) or speaker < 0:
            raise ValueError(f"speaker must be a non-negative integer, got {speaker!r}")
        params = self._params(params)
        if len(self._rows) >= self.max_streams or None not in self._slots:
            raise BatchFullError(f"all {min(self.max_streams, len(self._slots))} stream slots are busy")
        rows = self.prompt.rows(text, speaker, context)
        length = len(rows.tokens)
        max_frames = max(1, params.max_audio_ms // FRAME_MS)
        need = length + max_frames
        if need > self.settings.max_seq_len:
            raise ValueError(
                f"prompt ({length} positions) + {max_frames} frames exceeds max_seq_len "
                f"{self.settings.max_seq_len}: shorten the text/context or max_audio_ms"
            )
        row, slot = len(self._rows), self._slots.index(None)
        self.hidden[row] = self._prefill(row, rows)
        self.pos[row] = length
        self.temperature[row] = params.temperature if not params.greedy else 1.0
        self.topk[row] = params.topk
        self.greedy[row] = params.greedy
        seed = 0 if params.greedy else params.seed if params.seed is not None else secrets.randbits(62)
        self.seed[row] = seed
        self.counter[row] = 0
        mask = torch.zeros(len(self._slots), dtype=torch.bool)
        mask[slot] = True
        self.codec.reset(mask)
        stream = _Stream(next(self._ids), row, slot, params, max_frames, t0, next_pos=length)
        stream.t_prefilled = time.perf_counter()
        self._streams[stream.id] = stream
        self._rows.append(stream.id)
        self._slots[slot] = stream.id
        self._row_slots = None
        return stream.id

    @torch.no_grad()
    def _prefill(self, row: int, rows: PromptRows) -> torch.Tensor:
        """Fill `row`'s backbone cache with the prompt; returns the last hidden state. The longest stored prefix
        that ends at a context segment's end is copied in (prefix_cache.py), the rest is prefilled one segment at a
        time and then the request's text, and the whole context prefix is stored for the next request. The cache
        is always filled segment by segment, reused or not, so a reused prefix holds the very values a fresh prefill
        would compute and greedy codes do not depend on the reuse."""
        bounds = rows.boundaries
        keys = (
            prefix_keys(rows.tokens, rows.codes, rows.is_audio, bounds) if bounds and self.prefix_cache.enabled else []
        )
        start, entry = self.prefix_cache.lookup(keys, bounds) if keys else (0, None)
        if entry is not None:
            self.frame.backbone_cache.load_prefix(row, entry.keys, entry.values)
        base = start
        embeds = self.prompt.embed(rows, self.device, base)  # rows base: only
        for end in [b for b in bounds if b > base] + [len(rows.tokens)]:
            hidden = self.frame.prefill(row, embeds[start - base : end - base], start)
            start = end
        if keys and (entry is None or entry.length < bounds[-1]):
            self.prefix_cache.store(keys, bounds, *self.frame.backbone_cache.read_prefix(row, bounds[-1]))
        return hidden

    def prefix_stats(self) -> dict:
        """The prefix cache's counters (hits, misses, stores, evictions, reused_rows) and gauges (entries, bytes,
        max_bytes), for /metrics."""
        return self.prefix_cache.stats()

    def resize_codec(self, slots: int) -> None:
        """Decode with `slots` Mimi slots from now on (at most that many streams at once); only while idle. Mimi
        decodes every slot each step, so the sweep sets this to the batch it times: the cost a server with
        `max_streams = batch` pays."""
        if self._streams:
            raise RuntimeError("resize_codec() runs only while no stream is active")
        if not 1 <= slots <= self.max_streams:
            raise ValueError(f"codec slots must be 1..{self.max_streams}, got {slots}")
        if slots == self.codec.slots:
            return
        mimi = self.codec.mimi
        self.codec.close()
        self.codec = self.prompt.codec = MimiCodec(mimi, slots)
        self._slots = [None] * slots
        self._codec_codes = torch.zeros(slots, self.loaded.config.num_codebooks, dtype=torch.long, device=self.device)

    def _remove(self, stream: _Stream) -> None:
        """Free the stream's row and Mimi slot; the last row's stream moves into the freed row (rows stay 0..n-1)."""
        del self._streams[stream.id]
        self._slots[stream.slot] = None
        last = len(self._rows) - 1
        if stream.row != last:
            moved = self._streams[self._rows[last]]
            self._move_row(last, stream.row, moved.next_pos)
            moved.row = stream.row
            self._rows[stream.row] = moved.id
        self._rows.pop()
        self._row_slots = None

    def _move_row(self, src: int, dst: int, length: int) -> None:
        with torch.no_grad():
            self.frame.backbone_cache.move_row(src, dst, length)
            for t in (self.hidden, self.pos, self.temperature, self.topk, self.greedy, self.seed, self.counter):
                t[dst] = t[src]

    def cancel(self, stream_id: int) -> None:
        """Free the stream's row now; the next step() reports it finished with reason 'cancelled'."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        self._remove(stream)
        self._pending.append(StreamEvent(stream_id, None, True, "cancelled"))

    def active(self) -> int:
        return len(self._streams)

    def _decode(self, frame: torch.Tensor) -> np.ndarray:
        """Mimi-decode the rows' codes [n, 32], each in its stream's slot -> PCM [slots, 1920] (host)."""
        if self._row_slots is None:
            slots = [self._streams[sid].slot for sid in self._rows]
            self._row_slots = torch.tensor(slots, dtype=torch.long, device=self.device)
        self._codec_codes.index_copy_(0, self._row_slots, frame)
        return self.codec.decode_step(self._codec_codes[:, :, None]).cpu().numpy()

    def step(self) -> list[StreamEvent]:
        """One decode frame for every active stream (the numbered steps are in frame.py's docstring), then
        Mimi-decode it per slot and emit chunks where each stream's chunking says so."""
        events, self._pending = self._pending, []
        if not self._streams:
            return events
        frame = self._run_frame()
        pcm = self._decode(frame)
        codes = frame.cpu().numpy()
        now = time.perf_counter()
        ended = []
        for sid in self._rows:
            stream = self._streams[sid]
            stream.next_pos += 1
            row = codes[stream.row]
            reason = None
            if (row[:-1] == 0).all():  # transformers' end of speech: codebooks 0..N-2 all eos (0)
                reason = "eos"
            else:
                stream.pending_pcm.append(pcm[stream.slot])
                stream.pending_codes.append(row)
                stream.frames += 1
                if stream.frames >= stream.max_frames:
                    reason = "max_audio"
            want = stream.params.first_chunk_frames if stream.chunk_index == 0 else stream.params.chunk_frames
            if reason is None and len(stream.pending_pcm) < want:
                continue
            chunk = self._make_chunk(stream, now, is_last=reason is not None)
            events.append(StreamEvent(stream.id, chunk, reason is not None, reason))
            if reason is not None:
                ended.append(stream)
        for stream in ended:
            self._remove(stream)
        return events

    def _make_chunk(self, stream: _Stream, now: float, is_last: bool) -> AudioChunk:
        n = len(stream.pending_pcm)
        pcm = np.concatenate(stream.pending_pcm) if n else np.zeros(0, dtype=np.float32)
        codes = np.stack(stream.pending_codes) if n else np.zeros((0, self.loaded.config.num_codebooks), np.int64)
        stream.pending_pcm, stream.pending_codes = [], []
        elapsed = now - stream.t_start
        if stream.ttfa_ms is None and n:
            stream.ttfa_ms = elapsed * 1000
        audio_s = stream.frames * FRAME_MS / 1000
        metrics = ChunkMetrics(
            frames_total=stream.frames,
            ms_per_frame=(now - stream.t_prefilled) * 1000 / max(stream.frames, 1),
            ttfa_ms=stream.ttfa_ms,
            rtf=elapsed / audio_s if audio_s else float("inf"),
            elapsed_s=elapsed,
        )
        chunk = AudioChunk(pcm.astype(np.float32, copy=False), stream.chunk_index, n, is_last, metrics, codes)
        stream.chunk_index += 1
        return chunk

    # ---- single request ----------------------------------------------------------------------------------------
    def stream(
        self, text: str, speaker: int = 0, context: Sequence[Segment] = (), params: GenerationParams | None = None
    ) -> Iterator[AudioChunk]:
        """Yield chunks of one utterance. Uses the batch engine alone: no other stream may be active."""
        if self._streams:
            raise RuntimeError("stream() needs the generator to itself; use add_stream/step while batching")
        sid = self.add_stream(text, speaker, context, params)
        try:
            while sid in self._streams:
                for ev in self.step():
                    if ev.stream_id == sid and ev.chunk is not None:
                        yield ev.chunk
        finally:
            self.cancel(sid)
            self._pending = [e for e in self._pending if e.stream_id != sid]

    def generate(
        self, text: str, speaker: int = 0, context: Sequence[Segment] = (), params: GenerationParams | None = None
    ) -> np.ndarray:
        """The whole utterance as float32 PCM at 24 kHz."""
        chunks = [c.pcm for c in self.stream(text, speaker, context, params)]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def frame_codes(
        self,
        text: str,
        speaker: int = 0,
        context: Sequence[Segment] = (),
        frames: int = 24,
        greedy: bool = True,
        seed: int | None = None,
    ) -> np.ndarray:
        """Codes [n, 32] of up to `frames` frames (greedy by default): what the equality tests compare."""
        params = GenerationParams(max_audio_ms=frames * FRAME_MS, greedy=greedy, seed=seed)
        chunks = list(self.stream(text, speaker, context, params))
        return np.concatenate([c.codes for c in chunks]) if chunks else np.zeros((0, 32), np.int64)

    def warmup(self, sampling: tuple[bool, ...] = (True,)) -> dict:
        """Run one short sampled utterance through the whole path (compile happens here), then `prepare` every
        bucket serving will meet (`sampling`: (True,) for a server, add False for greedy benchmarks)."""
        t0 = time.perf_counter()
        params = GenerationParams(max_audio_ms=4 * FRAME_MS, seed=0, first_chunk_frames=1, chunk_frames=1)
        sid = self.add_stream(self.settings.warmup_text, 0, (), params)
        first = None
        while sid in self._streams:
            self.step()
            if first is None:
                first = time.perf_counter() - t0
        self._pending = []
        t1 = time.perf_counter()
        prepared = self.prepare(sampling)
        return {
            "compile_s": round(first or 0.0, 3) if self.compile_mode != "off" else 0.0,
            "prepare_s": round(time.perf_counter() - t1, 3),
            "prepared_shapes": prepared,
            "warmup_s": round(time.perf_counter() - t0, 3),
            "compile": self.compile_mode,
            "cuda_graphs": bool(self._graphs),
            "cuda_graphs_reason": self.cuda_graphs_reason,
        }

    def close(self) -> None:
        """Leave the codec's streaming mode, so its Mimi can serve the next generator (another batch size)."""
        self.codec.close()
