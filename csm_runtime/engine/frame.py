"""The CSM frame step over transformers' modules, gpt-fast style: static caches, explicit positions, device sampling.

We reuse the weights and sub-modules of `CsmForConditionalGeneration` (norms, projections, MLPs, rotary tables) but
not its forward: transformers' caches keep one position for the whole batch, and a server batch has streams that
joined at different times. Here every batch row has its own position in the backbone cache and its own mask.

Each decoder stack keeps its keys and values in a `KVCache` allocated once at the largest batch and length.
`FrameModel` holds the caches and the pieces of a frame; `FrameStep` runs one frame for the first B rows at once:
  0. (sampling only) the frame's uniform noise, hashed from each row's seed and frame counter
  1. backbone logits from the row's last hidden state -> codebook 0 (sampled or greedy)
  2. depth decoder over [hidden, c0] at positions 0-1 -> codebook 1, then one position per codebook -> 2..31
  3. the 32 codes are embedded (sum over codebooks) and run through the backbone at the row's position,
     giving the next hidden state; the position advances.
Step 3 of frame n is what transformers does at the start of frame n+1; moving it to the end makes every frame the
same fixed-shape function (prefill only fills the cache and the first hidden state), which is what torch.compile and
CUDA graphs need.

Shapes are static per (batch bucket, length bucket): a step runs over the first B rows (B = the smallest bucket
1, 2, 4, ... that holds the active streams, which the generator keeps in rows 0..n-1) and attends over the first L
cache positions (L = the smallest length bucket past every row's position), so a lone stream pays neither for 64
slots nor for 2048 positions. Grouped KV heads are attended without repeating the cache (`_attend`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from csm_runtime.engine.model import LoadedModel

# store(k, v) -> (keys, values): writes one layer's new keys/values into its cache, returns what the layer attends over
Store = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
LENGTH_BUCKET_MIN = 128  # the shortest attended cache length: a prompt plus a few seconds of audio
MASK32 = 0xFFFFFFFF


def buckets(limit: int, start: int = 1) -> tuple[int, ...]:
    """Static sizes a frame step runs at: powers of two from `start` below `limit`, then `limit` itself."""
    out, size = [], max(1, start)
    while size < limit:
        out.append(size)
        size *= 2
    out.append(limit)
    return tuple(out)


def bucket_for(n: int, sizes: tuple[int, ...]) -> int:
    """The smallest size in `sizes` that holds `n` (the largest when none does)."""
    return next((s for s in sizes if s >= n), sizes[-1])


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def _attend(q: Tensor, keys: Tensor, vals: Tensor, mask: Tensor, scale: float) -> Tensor:
    """SDPA with grouped KV heads, without repeating the cache: the `rep` query heads that share a KV head are folded
    into the query rows ([B, H, T, D] -> [B, KV, rep*T, D]), so every KV head is read once. Same maths as transformers'
    `repeat_kv` (query head h uses KV head h // rep); the mask's T rows are tiled once per folded head."""
    b, h, t, d = q.shape
    kv = keys.shape[1]
    rep = h // kv
    if rep == 1:
        return F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, scale=scale)
    if t > 1:
        mask = mask.repeat(*([1] * (mask.dim() - 2)), rep, 1)
    out = F.scaled_dot_product_attention(q.reshape(b, kv, rep * t, d), keys, vals, attn_mask=mask, scale=scale)
    return out.reshape(b, h, t, d)


def _attn_block(layer, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, store: Store) -> Tensor:
    """One decoder layer (HF CsmDecoderLayer maths) with our cache writes: `store(k, v)` keeps k/v, returns the cache."""
    attn = layer.self_attn
    b, t, _ = x.shape
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    keys, vals = store(k, v)
    o = _attend(q, keys, vals, mask, attn.scaling)
    x = x + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def _run_layers(layers, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, store: Callable[..., tuple]) -> Tensor:
    """The decoder layers in order; layer i stores its k/v with `store(i, k, v)`."""
    for i, layer in enumerate(layers):
        x = _attn_block(layer, x, cos, sin, mask, partial(store, i))
    return x


class KVCache:
    """Keys and values of every layer of one decoder stack (the backbone, or the depth decoder), gpt-fast style:
    allocated once at [rows, kv_heads, length, head_dim] and written in place, so the frame step's shapes never change
    and a captured graph keeps pointing at the same memory. Stale entries need no clearing: every read is masked to
    the positions the current stream wrote. Each `write_*` stores one layer's new k/v and returns what it attends over:
    the first B rows (B = the batch written) and, for the backbone, the first `length` positions.
    """

    def __init__(self, layers: int, rows: int, kv_heads: int, length: int, head_dim: int, *, device, dtype) -> None:
        shape = (rows, kv_heads, length, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.rows = torch.arange(rows, device=device)

    @classmethod
    def for_decoder(cls, decoder, rows: int, length: int, *, device, dtype) -> KVCache:
        """A cache shaped for a transformers decoder stack (its layer count, kv heads and head size)."""
        attn = decoder.layers[0].self_attn
        return cls(
            len(decoder.layers),
            rows,
            decoder.config.num_key_value_heads,
            length,
            attn.head_dim,
            device=device,
            dtype=dtype,
        )

    def write_prompt(self, layer: int, k: Tensor, v: Tensor, *, row: int, start: int = 0) -> tuple[Tensor, Tensor]:
        """Prefill: positions start..start+T-1 of `row` <- k/v [1, kv, T, hd]; returns positions :start+T of that row
        (the new rows see the prefix already in the cache, then themselves)."""
        end = start + k.shape[2]
        self.k[layer][row : row + 1, :, start:end].copy_(k)
        self.v[layer][row : row + 1, :, start:end].copy_(v)
        return self.k[layer][row : row + 1, :, :end], self.v[layer][row : row + 1, :, :end]

    def read_prefix(self, row: int, length: int) -> tuple[list[Tensor], list[Tensor]]:
        """Copies of positions :length of `row` in every layer ([kv, length, hd] each): a prefix kept for reuse."""
        return [t[row, :, :length].clone() for t in self.k], [t[row, :, :length].clone() for t in self.v]

    def load_prefix(self, row: int, keys: list[Tensor], values: list[Tensor]) -> None:
        """Positions :length of `row` <- a prefix from `read_prefix` (length = its second dimension), every layer."""
        for dst, src in zip((*self.k, *self.v), (*keys, *values), strict=True):
            dst[row, :, : src.shape[1]].copy_(src)

    def write_rows(self, layer: int, k: Tensor, v: Tensor, *, pos: Tensor, length: int) -> tuple[Tensor, Tensor]:
        """One new position per row: row b's position pos[b] <- k/v [B, kv, 1, hd]; returns rows :B, positions
        :length."""
        b = k.shape[0]
        rows = self.rows[:b]
        self.k[layer][rows, :, pos] = k[:, :, 0]
        self.v[layer][rows, :, pos] = v[:, :, 0]
        return self.k[layer][:b, :, :length], self.v[layer][:b, :, :length]

    def write_first(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Positions 0..T-1 of rows :B <- k/v [B, kv, T, hd]; returns rows :B."""
        b, t = k.shape[0], k.shape[2]
        self.k[layer][:b, :, :t] = k
        self.v[layer][:b, :, :t] = v
        return self.k[layer][:b], self.v[layer][:b]

    def write_at(self, layer: int, k: Tensor, v: Tensor, *, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Position `idx` (a 1-element device tensor: no host sync) of rows :B <- k/v [B, kv, 1, hd]; returns rows :B."""
        b = k.shape[0]
        kc, vc = self.k[layer][:b], self.v[layer][:b]
        kc.index_copy_(2, idx, k)
        vc.index_copy_(2, idx, v)
        return kc, vc

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy positions :length of row `src` into row `dst` in every layer (the generator compacting its rows)."""
        for t in (*self.k, *self.v):
            t[dst, :, :length] = t[src, :, :length]

    def reset(self) -> None:
        """Zero every layer in place (same storage, so graphs captured over it stay valid)."""
        for t in (*self.k, *self.v):
            t.zero_()


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (bijective on [0, 2^32)), in int64 arithmetic that cannot overflow: products stay < 2^59."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & MASK32
    return (x >> 16) ^ x


def frame_noise(seed: Tensor, counter: Tensor, index: Tensor) -> Tensor:
    """Uniform (0, 1) noise [B, N] for one frame, hashed from each row's seed [B] and frame counter [B] (both int64)
    over `index` = arange(N): counter-based like Philox, so one kernel chain serves every row, nothing is read back
    to the host, and a stream draws the same numbers alone or in any batch."""
    key = _mix32((seed & MASK32) ^ _mix32(((seed >> 32) & MASK32) ^ _mix32(counter & MASK32)))
    x = _mix32(index[None, :] ^ key[:, None])
    x = _mix32(x ^ _mix32(key ^ 0x68BC21EB)[:, None])
    return ((x >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


@dataclass
class Sampling:
    """Per-row sampling controls, device tensors so the frame step never reads host values."""

    temperature: Tensor  # [B] float
    topk: Tensor  # [B] long, 1..vocab
    greedy: Tensor  # [B] bool
    noise: Tensor | None  # [B, num_codebooks, vocab] uniform(0,1) for this frame (frame_noise); None when greedy
    enabled: bool = True  # host-side: False when every active row is greedy (skips sort/softmax; own graph)


def sample(logits: Tensor, s: Sampling, codebook: int | Tensor) -> Tensor:
    """[B, V] logits -> [B] ids. Greedy rows: argmax (as transformers). Others: temperature, top-k, then
    argmax(probs / Exp(1) noise) - an exact categorical draw with no host sync (gpt-fast's trick)."""
    logits = logits.float()
    greedy_ids = logits.argmax(-1)
    if not s.enabled:
        return greedy_ids
    scaled = logits / s.temperature[:, None]
    kth = scaled.sort(dim=-1, descending=True).values.gather(-1, (s.topk - 1)[:, None])
    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    # A 0-dim tensor index would be read back to the host under compile; index_select keeps it on the device.
    u = s.noise[:, codebook] if isinstance(codebook, int) else s.noise.index_select(1, codebook.view(1))[:, 0]
    q = -torch.log(u.clamp_min(1e-20))  # Exp(1)
    sampled = (probs / q).argmax(-1)
    return torch.where(s.greedy, greedy_ids, sampled)


class FrameModel:
    """Static caches for `rows` streams, `prefill`, and the fixed-shape pieces of a frame over explicit positions."""

    def __init__(self, loaded: LoadedModel, rows: int, max_seq: int, device: torch.device, dtype: torch.dtype):
        m = loaded.model
        cfg = m.config
        self.m = m
        self.cfg = cfg
        self.rows = rows
        self.max_seq = max_seq
        self.ncb = cfg.num_codebooks
        self.vocab = cfg.vocab_size
        bb, dd = m.backbone_model, m.depth_decoder.model
        self.bb, self.dd = bb, dd
        self.head = m.depth_decoder.codebooks_head
        # Caches: allocated once at the largest batch and length, reused forever (positions make them fresh).
        self.backbone_cache = KVCache.for_decoder(bb, rows, max_seq, device=device, dtype=dtype)
        self.depth_cache = KVCache.for_decoder(dd, rows, self.ncb, device=device, dtype=dtype)
        # Rotary tables from the HF rotary modules (same values as computing them per position).
        with torch.no_grad():
            probe = torch.zeros(1, device=device, dtype=dtype)
            self.bcos, self.bsin = (t[0] for t in bb.rotary_emb(probe, torch.arange(max_seq, device=device)[None]))
            self.dcos, self.dsin = (t[0] for t in dd.rotary_emb(probe, torch.arange(self.ncb, device=device)[None]))
        self.seq_range = torch.arange(max_seq, device=device)
        self.cb_range = torch.arange(self.ncb, device=device)
        self.noise_index = torch.arange(self.ncb * self.vocab, device=device)
        self.audio_offsets = torch.arange(self.ncb, device=device) * self.vocab
        self.cb_index = [torch.tensor(i, device=device) for i in range(self.ncb)]  # 0-dim, for depth_next

    # ---- embeddings -------------------------------------------------------------------------------------------
    def embed_audio(self, codes: Tensor) -> Tensor:
        """[..., 32] codes -> [..., H]: sum of per-codebook embeddings (CsmBackboneModelEmbeddings)."""
        return self.bb.embed_tokens.embed_audio_tokens(codes + self.audio_offsets).sum(dim=-2)

    def embed_prompt(self, tokens: Tensor, codes: Tensor, is_audio: Tensor) -> Tensor:
        """Prompt rows [T]: text token embedding, or the audio frame embedding where `is_audio` (as HF merges)."""
        text = self.m.embed_text_tokens(tokens)
        audio = self.embed_audio(codes)
        return torch.where(is_audio[:, None], audio, text)

    # ---- prefill (eager, variable length, one row) --------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, row: int, embeds: Tensor, start: int = 0) -> Tensor:
        """Run prompt rows [T, H] through the backbone into `row`'s cache positions start..start+T-1, attending over
        the positions :start already there (a reused prefix, or an earlier chunk) and causally over themselves;
        returns the last row's hidden state. `start=0` is a whole prompt."""
        t = embeds.shape[0]
        if t < 1 or start < 0 or start + t > self.max_seq:
            raise ValueError(f"prefill of {t} rows at position {start} does not fit {self.max_seq} positions")
        x = embeds[None]
        cos, sin = self.bcos[start : start + t][None, None], self.bsin[start : start + t][None, None]
        mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
        store = partial(self.backbone_cache.write_prompt, row=row, start=start)
        x = _run_layers(self.bb.layers, x, cos, sin, mask, store)
        return self.bb.norm(x)[0, -1]

    # ---- one frame (fixed shapes per bucket: compiled / graph-captured) -----------------------------------------
    def noise(self, seed: Tensor, counter: Tensor) -> Tensor:
        """This frame's sampling noise [B, 32, vocab] (frame_noise)."""
        return frame_noise(seed, counter, self.noise_index).view(seed.shape[0], self.ncb, self.vocab)

    def _backbone_step(self, x: Tensor, pos: Tensor, seq: Tensor) -> Tensor:
        """x [B, 1, H] at per-row positions pos [B], attending over positions seq = arange(L) -> normed hidden."""
        cos, sin = self.bcos[pos][:, None, None], self.bsin[pos][:, None, None]
        mask = (seq[None, :] <= pos[:, None])[:, None, None, :]  # [B, 1, 1, L]
        store = partial(self.backbone_cache.write_rows, pos=pos, length=seq.shape[0])
        x = _run_layers(self.bb.layers, x, cos, sin, mask, store)
        return self.bb.norm(x)[:, -1]

    def depth_first(
        self, hidden: Tensor, temperature, topk, greedy, noise, sampling: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Codebook 0 from the backbone head (lm_head), then the depth decoder over [hidden, c0] at positions 0-1
        -> codebook 1. Returns (c0, c1), each [B]."""
        s = Sampling(temperature, topk, greedy, noise, sampling)
        c0 = sample(self.m.lm_head(hidden), s, 0)
        x = self.dd.inputs_embeds_projector(torch.stack([hidden, self.dd.embed_tokens(c0)], dim=1))
        cos, sin = self.dcos[:2][None, None], self.dsin[:2][None, None]
        mask = self.cb_range[None, :] <= self.cb_range[:2, None]  # [2, 32] causal
        x = _run_layers(self.dd.layers, x, cos, sin, mask, self.depth_cache.write_first)
        # CsmCodebooksHead: position p uses weight[p - 1]
        return c0, sample(self.dd.norm(x)[:, -1] @ self.head.weight[0], s, 1)

    def depth_next(self, prev: Tensor, cb: Tensor, temperature, topk, greedy, noise, sampling: bool = True) -> Tensor:
        """Codebook `cb` (0-dim long tensor, 2..31) from codebook cb-1 `prev` [B] at depth position cb.
        One graph serves all 30 positions because the position is a tensor, not a Python int."""
        s = Sampling(temperature, topk, greedy, noise, sampling)
        x = self.dd.inputs_embeds_projector(self.dd.embed_tokens(prev + (cb - 1) * self.vocab))[:, None]
        idx = cb.view(1)
        cos, sin = self.dcos.index_select(0, idx)[None, None], self.dsin.index_select(0, idx)[None, None]
        mask = (self.cb_range <= cb)[None, :]  # [1, 32]
        x = _run_layers(self.dd.layers, x, cos, sin, mask, partial(self.depth_cache.write_at, idx=idx))
        logits = self.dd.norm(x)[:, -1] @ self.head.weight.index_select(0, idx - 1)[0]
        return sample(logits, s, cb)

    def backbone_next(self, frame: Tensor, pos: Tensor, seq: Tensor) -> tuple[Tensor, Tensor]:
        """Feed the frame [B, 32] back at each row's position -> (next hidden [B, H], next pos [B])."""
        hidden = self._backbone_step(self.embed_audio(frame)[:, None], pos, seq)
        return hidden, (pos + 1).clamp_max(self.max_seq - 1)


GRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")  # inductor captures CUDA graphs itself in these


@dataclass(frozen=True)
class FrameStep:
    """One frame for the first B rows, from FrameModel's fixed-shape pieces: its own methods (`eager`) or
    torch.compile'd copies of them (`compiled`). Which one runs, and whether it is captured as a CUDA graph, is chosen
    in one place: `StreamingGenerator._setup_step`."""

    frame: FrameModel
    noise: Callable[..., Tensor]
    depth_first: Callable[..., tuple[Tensor, Tensor]]
    depth_next: Callable[..., Tensor]
    backbone_next: Callable[..., tuple[Tensor, Tensor]]
    compile_mode: str = "off"

    @classmethod
    def eager(cls, frame: FrameModel) -> FrameStep:
        return cls(frame, frame.noise, frame.depth_first, frame.depth_next, frame.backbone_next)

    @classmethod
    def compiled(cls, frame: FrameModel, mode: str) -> FrameStep:
        """Each piece compiled whole (`fullgraph`: a graph break would put host work back into the step). Shapes
        start static; once a second batch or length bucket shows up torch recompiles that dimension as dynamic, so a
        few compiles serve every bucket (`StreamingGenerator.prepare` triggers them before serving)."""

        def compile_piece(fn):
            return torch.compile(fn, mode=mode, fullgraph=True)

        pieces = (frame.noise, frame.depth_first, frame.depth_next, frame.backbone_next)
        return cls(frame, *(compile_piece(fn) for fn in pieces), compile_mode=mode)

    @torch.no_grad()
    def __call__(
        self,
        hidden: Tensor,
        pos: Tensor,
        temperature: Tensor,
        topk: Tensor,
        greedy: Tensor,
        seed: Tensor,
        counter: Tensor,
        seq: Tensor,
        sampling: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """hidden [B, H] (last backbone state), pos [B] (next cache position), sampling controls as in `Sampling`,
        seed/counter [B] (the noise key), seq = arange(L) (the attended length). Returns (codes [B, 32], new hidden
        [B, H], new pos [B]). No host syncs."""
        graphed = self.compile_mode in GRAPH_COMPILE_MODES
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()
        noise = self.noise(seed, counter) if sampling else None
        samp = (temperature, topk, greedy, noise, sampling)
        # inductor's own graphs may reuse their output buffers on a later call: keep a copy of each codebook
        keep = torch.clone if graphed else (lambda t: t)
        c0, c = self.depth_first(hidden, *samp)
        codes = [keep(c0), keep(c)]
        for cb in range(2, self.frame.ncb):
            c = self.depth_next(c, self.frame.cb_index[cb], *samp)
            codes.append(keep(c))
        frame = torch.stack(codes, dim=1)
        new_hidden, new_pos = self.backbone_next(frame, pos, seq)
        return frame, new_hidden, new_pos
