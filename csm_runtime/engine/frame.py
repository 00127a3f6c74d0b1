"""The CSM frame step over transformers' modules, gpt-fast style: static caches, explicit positions, device sampling.

We reuse the weights and sub-modules of `CsmForConditionalGeneration` (norms, projections, MLPs, rotary tables) but
not its forward: transformers' caches keep one position for the whole batch, and a server batch has streams that
joined at different times. Here every batch row (slot) has its own position in the backbone cache and its own mask.

One frame (`decode_frame`), for every slot at once:
  1. backbone logits from the slot's last hidden state -> codebook 0 (sampled or greedy)
  2. depth decoder over [hidden, c0] at positions 0-1 -> codebook 1, then one position per codebook -> 2..31
  3. the 32 codes are embedded (sum over codebooks) and run through the backbone at the slot's position,
     giving the next hidden state; the position advances.
Step 3 of frame n is what transformers does at the start of frame n+1; moving it to the end makes every frame the
same fixed-shape function (prefill only fills the cache and the first hidden state).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from csm_runtime.engine.model import LoadedModel


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def _attn_block(layer, x: Tensor, cos: Tensor, sin: Tensor, kc: Tensor, vc: Tensor, write, mask: Tensor) -> Tensor:
    """One decoder layer (HF CsmDecoderLayer maths) with our cache writes; `write(cache, new)` stores k/v."""
    attn = layer.self_attn
    b, t, _ = x.shape
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    write(kc, k)
    write(vc, v)
    rep = attn.num_key_value_groups
    keys = kc.repeat_interleave(rep, dim=1) if rep > 1 else kc
    vals = vc.repeat_interleave(rep, dim=1) if rep > 1 else vc
    o = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, scale=attn.scaling)
    x = x + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


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
    """Static caches for `slots` rows plus `prefill` and `decode_frame` over explicit positions."""

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
        a_bb, a_dd = bb.layers[0].self_attn, dd.layers[0].self_attn
        kv_bb = cfg.num_key_value_heads
        kv_dd = cfg.depth_decoder_config.num_key_value_heads

        def alloc(n, kv, s, hd):
            return [torch.zeros(slots, kv, s, hd, device=device, dtype=dtype) for _ in range(n)]

        # Caches: allocated once at the largest batch and length, reused forever (positions make them fresh).
        self.bk, self.bv = alloc(len(bb.layers), kv_bb, max_seq, a_bb.head_dim), alloc(len(bb.layers), kv_bb, max_seq, a_bb.head_dim)  # fmt: skip
        self.dk, self.dv = alloc(len(dd.layers), kv_dd, self.ncb, a_dd.head_dim), alloc(len(dd.layers), kv_dd, self.ncb, a_dd.head_dim)  # fmt: skip
        # Rotary tables from the HF rotary modules (same values as computing them per position).
        with torch.no_grad():
            probe = torch.zeros(1, device=device, dtype=dtype)
            self.bcos, self.bsin = (t[0] for t in bb.rotary_emb(probe, torch.arange(max_seq, device=device)[None]))
            self.dcos, self.dsin = (t[0] for t in dd.rotary_emb(probe, torch.arange(self.ncb, device=device)[None]))
        self.rows = torch.arange(slots, device=device)
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

        for i, layer in enumerate(self.bb.layers):
            kc, vc = self.bk[i][slot : slot + 1, :, :t], self.bv[i][slot : slot + 1, :, :t]
            x = _attn_block(layer, x, cos, sin, kc, vc, lambda c, new: c.copy_(new), mask)
        return self.bb.norm(x)[0, -1]

    # ---- one frame (fixed shapes: compiled / graph-captured) ----------------------------------------------------
    def _backbone_step(self, x: Tensor, pos: Tensor) -> Tensor:
        """x [B, 1, H] at per-row positions pos [B] -> normed hidden [B, H]."""
        cos, sin = self.bcos[pos][:, None, None], self.bsin[pos][:, None, None]
        mask = (self.seq_range[None, :] <= pos[:, None])[:, None, None, :]  # [B, 1, 1, S]
        rows = self.rows

        def write(cache, new):
            cache[rows, :, pos] = new[:, :, 0]

        for i, layer in enumerate(self.bb.layers):
            x = _attn_block(layer, x, cos, sin, self.bk[i], self.bv[i], write, mask)
        return self.bb.norm(x)[:, -1]

    def _depth_layers(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, write) -> Tensor:
        for i, layer in enumerate(self.dd.layers):
            x = _attn_block(layer, x, cos, sin, self.dk[i], self.dv[i], write, mask)
        return self.dd.norm(x)[:, -1]

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

        def write(cache, new):
            cache[:, :, :2] = new

        h = self._depth_layers(x, cos, sin, mask, write)
        return c0, sample(h @ self.head.weight[0], s, 1)  # CsmCodebooksHead: position p uses weight[p - 1]

    def depth_next(self, prev: Tensor, cb: Tensor, temperature, topk, greedy, noise, sampling: bool = True) -> Tensor:
        """Codebook `cb` (0-dim long tensor, 2..31) from codebook cb-1 `prev` [B] at depth position cb.
        One graph serves all 30 positions because the position is a tensor, not a Python int."""
        s = Sampling(temperature, topk, greedy, noise, sampling)
        x = self.dd.inputs_embeds_projector(self.dd.embed_tokens(prev + (cb - 1) * self.vocab))[:, None]
        idx = cb.view(1)
        cos, sin = self.dcos.index_select(0, idx)[None, None], self.dsin.index_select(0, idx)[None, None]
        mask = (self.cb_range <= cb)[None, :]  # [1, 32]

        def write(cache, new):
            cache.index_copy_(2, idx, new)

        h = self._depth_layers(x, cos, sin, mask, write)
        logits = h @ self.head.weight.index_select(0, idx - 1)[0]
        return sample(logits, s, cb)

    def backbone_next(self, frame: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Feed the frame [B, 32] back at each slot's position -> (next hidden [B, H], next pos [B])."""
        hidden = self._backbone_step(self.embed_audio(frame)[:, None], pos)
        return hidden, (pos + 1).clamp_max(self.max_seq - 1)

    def compile(self, mode: str) -> None:
        """Swap the three fixed-shape pieces for torch.compile'd ones (the only place compilation is chosen)."""
        for name in ("depth_first", "depth_next", "backbone_next"):
            setattr(self, name, torch.compile(getattr(self, name), mode=mode, fullgraph=True))

    @torch.no_grad()
    def decode_frame(self, hidden: Tensor, pos: Tensor, temperature: Tensor, topk: Tensor, greedy: Tensor,
                     noise: Tensor, sampling: bool = True) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """One frame for all slots. hidden [B, H] (last backbone state), pos [B] (next cache position), sampling
        controls as in `Sampling`. Returns (codes [B, 32], new hidden [B, H], new pos [B]). No host syncs."""
        samp = (temperature, topk, greedy, noise, sampling)
        c0, c = self.depth_first(hidden, *samp)
        codes = [c0, c]
        for cb in range(2, self.ncb):
            c = self.depth_next(c, self.cb_index[cb], *samp)
            codes.append(c)
        frame = torch.stack(codes, dim=1)
        new_hidden, new_pos = self.backbone_next(frame, pos)
        return frame, new_hidden, new_pos
