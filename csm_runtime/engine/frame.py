"""The CSM frame step over transformers' modules, gpt-fast style: static caches, explicit positions, device sampling.

We reuse the weights and sub-modules of `CsmForConditionalGeneration` (norms, projections, MLPs, rotary tables) but
not its forward: transformers' caches keep one position for the whole batch, and a server batch has streams that
joined at different times. Here every batch row (slot) has its own position in the backbone cache and its own mask.

Each decoder stack keeps its keys and values in a `KVCache` allocated once at the largest batch and length.
`FrameModel` holds the caches and the pieces of a frame; `FrameStep` runs one frame, for every slot at once:
  1. backbone logits from the slot's last hidden state -> codebook 0 (sampled or greedy)
  2. depth decoder over [hidden, c0] at positions 0-1 -> codebook 1, then one position per codebook -> 2..31
  3. the 32 codes are embedded (sum over codebooks) and run through the backbone at the slot's position,
     giving the next hidden state; the position advances.
Step 3 of frame n is what transformers does at the start of frame n+1; moving it to the end makes every frame the
same fixed-shape function (prefill only fills the cache and the first hidden state), which is what torch.compile and
CUDA graphs need.
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


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def _attn_block(layer, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, store: Store) -> Tensor:
    """One decoder layer (HF CsmDecoderLayer maths) with our cache writes: `store(k, v)` keeps k/v, returns the cache."""
    attn = layer.self_attn
    b, t, _ = x.shape
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    kc, vc = store(k, v)
    rep = attn.num_key_value_groups
    keys = kc.repeat_interleave(rep, dim=1) if rep > 1 else kc
    vals = vc.repeat_interleave(rep, dim=1) if rep > 1 else vc
    o = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, scale=attn.scaling)
    x = x + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def _run_layers(layers, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, store: Callable[..., tuple]) -> Tensor:
    """The decoder layers in order; layer i stores its k/v with `store(i, k, v)`."""
    for i, layer in enumerate(layers):
        x = _attn_block(layer, x, cos, sin, mask, partial(store, i))
    return x


class KVCache:
    """Keys and values of every layer of one decoder stack (the backbone, or the depth decoder), gpt-fast style:
    allocated once at [slots, kv_heads, length, head_dim] and written in place, so the frame step's shapes never change
    and a captured graph keeps pointing at the same memory. Stale entries need no clearing: every read is masked to
    the positions the current stream wrote. Each `write_*` stores one layer's new k/v and returns what it attends over.
    """

    def __init__(self, layers: int, slots: int, kv_heads: int, length: int, head_dim: int, *, device, dtype) -> None:
        shape = (slots, kv_heads, length, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.rows = torch.arange(slots, device=device)

    @classmethod
    def for_decoder(cls, decoder, slots: int, length: int, *, device, dtype) -> KVCache:
        """A cache shaped for a transformers decoder stack (its layer count, kv heads and head size)."""
        attn = decoder.layers[0].self_attn
        return cls(
            len(decoder.layers),
            slots,
            decoder.config.num_key_value_heads,
            length,
            attn.head_dim,
            device=device,
            dtype=dtype,
        )

    def write_prompt(self, layer: int, k: Tensor, v: Tensor, *, slot: int) -> tuple[Tensor, Tensor]:
        """Prefill: positions 0..T-1 of `slot` <- k/v [1, kv, T, hd]; returns those rows (the prompt sees only itself)."""
        t = k.shape[2]
        kc, vc = self.k[layer][slot : slot + 1, :, :t], self.v[layer][slot : slot + 1, :, :t]
        kc.copy_(k)
        vc.copy_(v)
        return kc, vc

    def write_rows(self, layer: int, k: Tensor, v: Tensor, *, pos: Tensor) -> tuple[Tensor, Tensor]:
        """One new position per row: row b's position pos[b] <- k/v [B, kv, 1, hd]; returns the whole layer."""
        self.k[layer][self.rows, :, pos] = k[:, :, 0]
        self.v[layer][self.rows, :, pos] = v[:, :, 0]
        return self.k[layer], self.v[layer]

    def write_first(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Positions 0..T-1 of every row <- k/v [B, kv, T, hd]; returns the whole layer."""
        t = k.shape[2]
        self.k[layer][:, :, :t] = k
        self.v[layer][:, :, :t] = v
        return self.k[layer], self.v[layer]

    def write_at(self, layer: int, k: Tensor, v: Tensor, *, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Position `idx` (a 1-element device tensor: no host sync) of every row <- k/v [B, kv, 1, hd]."""
        self.k[layer].index_copy_(2, idx, k)
        self.v[layer].index_copy_(2, idx, v)
        return self.k[layer], self.v[layer]

    def reset(self) -> None:
        """Zero every layer in place (same storage, so graphs captured over it stay valid)."""
        for t in (*self.k, *self.v):
            t.zero_()


@dataclass
class Sampling:
    """Per-slot sampling controls, device tensors so the frame step never reads host values."""

    temperature: Tensor  # [B] float
    topk: Tensor  # [B] long, 1..vocab
    greedy: Tensor  # [B] bool
    noise: Tensor  # [B, num_codebooks, vocab] uniform(0,1), refilled per frame from each stream's generator
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
    """Static caches for `slots` rows, `prefill`, and the fixed-shape pieces of a frame over explicit positions."""

    def __init__(self, loaded: LoadedModel, slots: int, max_seq: int, device: torch.device, dtype: torch.dtype):
        m = loaded.model
        cfg = m.config
        self.m = m
        self.cfg = cfg
        self.slots = slots
        self.max_seq = max_seq
        self.ncb = cfg.num_codebooks
        self.vocab = cfg.vocab_size
        bb, dd = m.backbone_model, m.depth_decoder.model
        self.bb, self.dd = bb, dd
        self.head = m.depth_decoder.codebooks_head
        # Caches: allocated once at the largest batch and length, reused forever (positions make them fresh).
        self.backbone_cache = KVCache.for_decoder(bb, slots, max_seq, device=device, dtype=dtype)
        self.depth_cache = KVCache.for_decoder(dd, slots, self.ncb, device=device, dtype=dtype)
        # Rotary tables from the HF rotary modules (same values as computing them per position).
        with torch.no_grad():
            probe = torch.zeros(1, device=device, dtype=dtype)
            self.bcos, self.bsin = (t[0] for t in bb.rotary_emb(probe, torch.arange(max_seq, device=device)[None]))
            self.dcos, self.dsin = (t[0] for t in dd.rotary_emb(probe, torch.arange(self.ncb, device=device)[None]))
        self.seq_range = torch.arange(max_seq, device=device)
        self.cb_range = torch.arange(self.ncb, device=device)
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

    # ---- prefill (eager, variable length, one slot) -------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, slot: int, embeds: Tensor) -> Tensor:
        """Run the prompt [T, H] through the backbone into `slot`'s cache rows 0..T-1; returns the last hidden [H]."""
        t = embeds.shape[0]
        x = embeds[None]
        cos, sin = self.bcos[:t][None, None], self.bsin[:t][None, None]
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        x = _run_layers(self.bb.layers, x, cos, sin, mask, partial(self.backbone_cache.write_prompt, slot=slot))
        return self.bb.norm(x)[0, -1]

    # ---- one frame (fixed shapes: compiled / graph-captured) ----------------------------------------------------
    def _backbone_step(self, x: Tensor, pos: Tensor) -> Tensor:
        """x [B, 1, H] at per-row positions pos [B] -> normed hidden [B, H]."""
        cos, sin = self.bcos[pos][:, None, None], self.bsin[pos][:, None, None]
        mask = (self.seq_range[None, :] <= pos[:, None])[:, None, None, :]  # [B, 1, 1, S]
        x = _run_layers(self.bb.layers, x, cos, sin, mask, partial(self.backbone_cache.write_rows, pos=pos))
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
        return c0, sample(
            self.dd.norm(x)[:, -1] @ self.head.weight[0], s, 1
        )  # CsmCodebooksHead: position p uses weight[p - 1]

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

    def backbone_next(self, frame: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Feed the frame [B, 32] back at each slot's position -> (next hidden [B, H], next pos [B])."""
        hidden = self._backbone_step(self.embed_audio(frame)[:, None], pos)
        return hidden, (pos + 1).clamp_max(self.max_seq - 1)


@dataclass(frozen=True)
class FrameStep:
    """One frame for every slot, from FrameModel's three fixed-shape pieces: its own methods (`eager`) or
    torch.compile'd copies of them (`compiled`). Which one runs, and whether it is captured as a CUDA graph, is chosen
    in one place: `StreamingGenerator._setup_step`."""

    frame: FrameModel
    depth_first: Callable[..., tuple[Tensor, Tensor]]
    depth_next: Callable[..., Tensor]
    backbone_next: Callable[..., tuple[Tensor, Tensor]]
    compile_mode: str = "off"

    @classmethod
    def eager(cls, frame: FrameModel) -> FrameStep:
        return cls(frame, frame.depth_first, frame.depth_next, frame.backbone_next)

    @classmethod
    def compiled(cls, frame: FrameModel, mode: str) -> FrameStep:
        """Each piece compiled whole (`fullgraph`): a graph break would put host work back into the step."""

        def compile_piece(fn):
            return torch.compile(fn, mode=mode, fullgraph=True)

        pieces = (frame.depth_first, frame.depth_next, frame.backbone_next)
        return cls(frame, *(compile_piece(fn) for fn in pieces), compile_mode=mode)

    @torch.no_grad()
    def __call__(
        self,
        hidden: Tensor,
        pos: Tensor,
        temperature: Tensor,
        topk: Tensor,
        greedy: Tensor,
        noise: Tensor,
        sampling: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """hidden [B, H] (last backbone state), pos [B] (next cache position), sampling controls as in `Sampling`.
        Returns (codes [B, 32], new hidden [B, H], new pos [B]). No host syncs."""
        samp = (temperature, topk, greedy, noise, sampling)
        c0, c = self.depth_first(hidden, *samp)
        codes = [c0, c]
        for cb in range(2, self.frame.ncb):
            c = self.depth_next(c, self.frame.cb_index[cb], *samp)
            codes.append(c)
        frame = torch.stack(codes, dim=1)
        new_hidden, new_pos = self.backbone_next(frame, pos)
        return frame, new_hidden, new_pos
