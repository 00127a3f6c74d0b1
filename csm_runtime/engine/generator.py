"""StreamingGenerator: CSM + Mimi as a static batch of `max_streams` slots, one frame per `step()`.

The scheduler (one thread) calls `add_stream` (prefill into a free slot), `step` (one frame for every slot, chunks
out), `cancel`. `stream()` and `generate()` are the same engine driven for a single request, so batching and
single-stream share one code path. Not thread-safe: one thread owns a generator. Build one with `load_generator`
(loader.py).
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
from csm_runtime.engine.frame import FrameModel, FrameStep
from csm_runtime.engine.model import LoadedModel
from csm_runtime.engine.prompt import PromptBuilder
from csm_runtime.engine.types import AudioChunk, ChunkMetrics, GenerationParams, Segment, StreamEvent
from csm_runtime.settings import RuntimeSettings

FRAME_MS = 1000 * FRAME_SAMPLES // SAMPLE_RATE  # 80
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class BatchFullError(RuntimeError):
    """Every slot of the static batch is busy; retry after a stream finishes."""


@dataclass
class _Stream:
    id: int
    slot: int
    params: GenerationParams
    max_frames: int
    t_start: float
    t_prefilled: float = 0.0
    frames: int = 0  # audio frames produced (EOS frame excluded)
    chunk_index: int = 0
    pending_pcm: list = field(default_factory=list)
    pending_codes: list = field(default_factory=list)
    ttfa_ms: float | None = None
    generator: torch.Generator | None = None


class StreamingGenerator:
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
        cfg = loaded.config
        b = self.max_streams
        # Per-slot state the frame step reads and writes (static buffers: graph-capturable).
        self.hidden = torch.zeros(b, cfg.hidden_size, device=device, dtype=dtype)
        self.pos = torch.zeros(b, dtype=torch.long, device=device)
        self.temperature = torch.ones(b, device=device)
        self.topk = torch.ones(b, dtype=torch.long, device=device)
        self.greedy = torch.ones(b, dtype=torch.bool, device=device)
        self.noise = torch.rand(b, cfg.num_codebooks, cfg.vocab_size, device=device)
        self._streams: dict[int, _Stream] = {}
        self._slots: list[int | None] = [None] * b
        self._ids = itertools.count(1)
        self._pending: list[StreamEvent] = []
        self._frame_step: FrameStep | None = None  # set by _setup_step
        self._graph = None
        self.compile_mode = settings.compile
        self.cuda_graphs_reason: str | None = None
        self._setup_step()

    # ---- optimisation switches (one place) -------------------------------------------------------------------
    def _setup_step(self) -> None:
        """The one place the frame step is chosen: eager or torch.compile'd pieces (settings.compile), and whether
        the whole step is replayed as a CUDA graph (settings.cuda_graphs; `cuda_graphs_reason` says why not)."""
        mode = self.settings.compile
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
        self._frame_step = FrameStep.eager(self.frame) if mode == "off" else FrameStep.compiled(self.frame, mode)
        if not self.settings.cuda_graphs:
            self.cuda_graphs_reason = "disabled by settings (cuda_graphs: false)"
        elif self.device.type != "cuda":
            self.cuda_graphs_reason = f"CUDA graphs need a CUDA device; running on {self.device.type}"
        elif mode in ("reduce-overhead", "max-autotune"):
            self.cuda_graphs_reason = f"compile mode {mode} already captures CUDA graphs"
        else:
            self.cuda_graphs_reason = None  # captured lazily on the first step (after compile warm-up)

    def _capture_graph(self) -> None:
        """Capture the frame step over the static slot buffers (CUDA only); replay = one frame for all slots."""
        args = (self.hidden, self.pos, self.temperature, self.topk, self.greedy, self.noise)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        saved = (self.hidden.clone(), self.pos.clone())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up runs (and compile) outside capture
                self._frame_step(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._frame_step(*args)
        self.hidden.copy_(saved[0])
        self.pos.copy_(saved[1])
        self._graph = (graph, out)

    def _run_frame(self) -> torch.Tensor:
        if self.cuda_graphs_reason is None and self._graph is None:
            self._capture_graph()
        if self._graph is not None:
            graph, (frame, hidden, pos) = self._graph
            graph.replay()
        else:
            sampling = any(not st.params.greedy for st in self._streams.values())
            args = (self.hidden, self.pos, self.temperature, self.topk, self.greedy, self.noise)
            frame, hidden, pos = self._frame_step(*args, sampling)
        self.hidden.copy_(hidden)
        self.pos.copy_(pos)
        return frame

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
        """Prefill a free slot with the prompt; returns the stream id. Raises BatchFullError or ValueError."""
        t0 = time.perf_counter()
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text is empty")
        if not isinstance(speaker, int) or speaker < 0:
            raise ValueError(f"speaker must be a non-negative integer, got {speaker!r}")
        params = self._params(params)
        try:
            slot = self._slots.index(None)
        except ValueError:
            raise BatchFullError(f"all {self.max_streams} stream slots are busy") from None
        with torch.no_grad():
            embeds = self.build_prompt(text, speaker, context)
        max_frames = max(1, params.max_audio_ms // FRAME_MS)
        need = embeds.shape[0] + max_frames
        if need > self.settings.max_seq_len:
            raise ValueError(
                f"prompt ({embeds.shape[0]} positions) + {max_frames} frames exceeds max_seq_len "
                f"{self.settings.max_seq_len}: shorten the text/context or max_audio_ms"
            )
        self.hidden[slot] = self.frame.prefill(slot, embeds)
        self.pos[slot] = embeds.shape[0]
        self.temperature[slot] = params.temperature if not params.greedy else 1.0
        self.topk[slot] = params.topk
        self.greedy[slot] = params.greedy
        mask = torch.zeros(self.max_streams, dtype=torch.bool)
        mask[slot] = True
        self.codec.reset(mask)
        gen = None
        if not params.greedy:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(params.seed if params.seed is not None else secrets.randbits(62))
        stream = _Stream(next(self._ids), slot, params, max_frames, t0, generator=gen)
        stream.t_prefilled = time.perf_counter()
        self._streams[stream.id] = stream
        self._slots[slot] = stream.id
        return stream.id

    def cancel(self, stream_id: int) -> None:
        """Free the stream's slot now; the next step() reports it finished with reason 'cancelled'."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._slots[stream.slot] = None
        self._pending.append(StreamEvent(stream_id, None, True, "cancelled"))

    def active(self) -> int:
        return len(self._streams)

    def step(self) -> list[StreamEvent]:
        """One decode frame for every active stream (the numbered steps are in frame.py's docstring), then
        Mimi-decode it per slot and emit chunks where each stream's chunking says so."""
        events, self._pending = self._pending, []
        if not self._streams:
            return events
        for stream in self._streams.values():
            if stream.generator is not None:
                self.noise[stream.slot].uniform_(generator=stream.generator)
        frame = self._run_frame()
        pcm = self.codec.decode_step(frame[:, :, None]).cpu().numpy()
        codes = frame.cpu().numpy()
        now = time.perf_counter()
        for stream in list(self._streams.values()):
            row = codes[stream.slot]
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
                del self._streams[stream.id]
                self._slots[stream.slot] = None
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

    def warmup(self) -> dict:
        """Run one short utterance through the whole path (compile and graph capture happen here)."""
        t0 = time.perf_counter()
        params = GenerationParams(max_audio_ms=4 * FRAME_MS, greedy=True, first_chunk_frames=1, chunk_frames=1)
        sid = self.add_stream(self.settings.warmup_text, 0, (), params)
        first = None
        while sid in self._streams:
            self.step()
            if first is None:
                first = time.perf_counter() - t0
        self._pending = []
        return {
            "compile_s": round(first or 0.0, 3) if self.compile_mode != "off" else 0.0,
            "warmup_s": round(time.perf_counter() - t0, 3),
            "compile": self.compile_mode,
            "cuda_graphs": self._graph is not None,
            "cuda_graphs_reason": self.cuda_graphs_reason,
        }

    def close(self) -> None:
        """Leave the codec's streaming mode, so its Mimi can serve the next generator (another batch size)."""
        self.codec.close()
