"""How a StreamingGenerator runs one frame: eager or torch.compile'd pieces, and one CUDA graph per (batch bucket,
length bucket, sampling) replayed over the generator's static row buffers.

`FrameExecution` is the execution half of StreamingGenerator (generator.py), kept apart so the rows-and-streams half
reads on its own. It uses the generator's buffers (`hidden`, `pos`, `temperature`, `topk`, `greedy`, `seed`,
`counter`), its `frame` (FrameModel), `settings`, `device`, `batch_buckets`, `length_buckets`, `_rows` and
`_streams`.
"""

from __future__ import annotations

import torch

from csm_runtime.engine.frame import GRAPH_COMPILE_MODES, FrameStep, bucket_for

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
RECOMPILE_LIMIT = 64  # compiled pieces per code object: sampling on/off x batch 1/dynamic x generators in one process


class FrameExecution:
    """The frame step chosen once (`_setup_step`), run per bucket (`_run_frame`), prepared ahead (`prepare`)."""

    _frame_step: FrameStep | None
    _graphs: dict[tuple[int, int, bool], tuple]
    cuda_graphs_reason: str | None

    # ---- optimisation switches (one place) -------------------------------------------------------------------
    def _setup_step(self) -> None:
        """The one place the frame step is chosen: eager or torch.compile'd pieces (settings.compile), and whether
        each (batch, length, sampling) bucket is replayed as a CUDA graph (settings.cuda_graphs; `cuda_graphs_reason`
        says why not)."""
        mode = self.settings.compile
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
        if mode != "off":
            config = torch._dynamo.config
            for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
                if hasattr(config, name):
                    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
        self._frame_step = FrameStep.eager(self.frame) if mode == "off" else FrameStep.compiled(self.frame, mode)
        if not self.settings.cuda_graphs:
            self.cuda_graphs_reason = "disabled by settings (cuda_graphs: false)"
        elif self.device.type != "cuda":
            self.cuda_graphs_reason = f"CUDA graphs need a CUDA device; running on {self.device.type}"
        elif mode in GRAPH_COMPILE_MODES:
            self.cuda_graphs_reason = f"compile mode {mode} already captures CUDA graphs"
        else:
            self.cuda_graphs_reason = None  # one graph per bucket, captured on first use (warmup captures them all)

    def _frame_body(self, batch: int, length: int, sampling: bool) -> torch.Tensor:
        """One frame over rows :batch attending over positions :length, state written back into the static buffers
        (so a captured graph is the whole frame). Returns the codes [batch, 32]."""
        frame, hidden, pos = self._frame_step(
            self.hidden[:batch],
            self.pos[:batch],
            self.temperature[:batch],
            self.topk[:batch],
            self.greedy[:batch],
            self.seed[:batch],
            self.counter[:batch],
            self.frame.seq_range[:length],
            sampling,
        )
        self.hidden[:batch].copy_(hidden)
        self.pos[:batch].copy_(pos)
        self.counter[:batch].add_(1)
        return frame

    def _state(self, batch: int) -> list[torch.Tensor]:
        return [t[:batch].clone() for t in (self.hidden, self.pos, self.counter)]

    def _restore(self, batch: int, saved: list[torch.Tensor]) -> None:
        for t, old in zip((self.hidden, self.pos, self.counter), saved, strict=True):
            t[:batch].copy_(old)

    def _capture_graph(self, key: tuple[int, int, bool]) -> tuple:
        """Capture one bucket's frame over the static buffers (CUDA only); replay = one frame for rows :batch.
        The warm-up runs (compile happens there) advance the rows' state, so it is put back; the positions they wrote
        in the caches are written again by the next real frame before anything reads them."""
        batch = key[0]
        saved = self._state(batch)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._frame_body(*key)
        torch.cuda.current_stream().wait_stream(side)
        self._restore(batch, saved)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._frame_body(*key)
        self._graphs[key] = (graph, out)
        return self._graphs[key]

    def _bucket(self) -> tuple[int, int, bool]:
        """(batch bucket, length bucket, sampling) of the next frame, from host-side state only."""
        streams = [self._streams[sid] for sid in self._rows]
        batch = bucket_for(len(streams), self.batch_buckets)
        length = bucket_for(max(s.next_pos for s in streams) + 1, self.length_buckets)
        return batch, length, any(not s.params.greedy for s in streams)

    def _run_frame(self) -> torch.Tensor:
        """One frame for the active rows -> codes [n, 32] in row order."""
        key = self._bucket()
        if self.cuda_graphs_reason is None:
            graph, frame = self._graphs.get(key) or self._capture_graph(key)
            graph.replay()
        else:
            frame = self._frame_body(*key)
        return frame[: len(self._rows)]

    def prepare(self, sampling: tuple[bool, ...] = (True,)) -> int:
        """Compile and capture ahead what serving will meet, so no request pays for it: with CUDA graphs, one graph
        per (batch bucket, length bucket, sampling); compiled without graphs, batches 1 and 2 at the first two lengths
        (after those, torch's dynamic-shape recompile serves every other bucket). Only between streams. Returns the
        shapes prepared."""
        if self._streams:
            raise RuntimeError("prepare() runs only while no stream is active")
        if self.cuda_graphs_reason is None:
            keys = [(b, n, s) for s in sampling for b in self.batch_buckets for n in self.length_buckets]
            for key in keys:
                if key not in self._graphs:
                    self._capture_graph(key)
            return len(keys)
        if self.compile_mode == "off":
            return 0
        keys = [(b, n, s) for s in sampling for n in self.length_buckets[:2] for b in self.batch_buckets[:2]]
        for key in keys:
            saved = self._state(key[0])
            self._frame_body(*key)
            self._restore(key[0], saved)
        return len(keys)
