"""Weight-only int8 for the decoder layers, gpt-fast style (`quantize.py`, WeightOnlyInt8QuantHandler).

A frame step is memory-bound: at batch 1 it reads every backbone and depth-decoder weight once per frame (the depth
decoder 31 times), so storing those weights in int8 (one scale per output channel) halves the bytes read against
bf16. The maths stays in the activation dtype: `linear(x, int8 weight cast back) * scale`, which torch.compile fuses
into the matmul's load on CUDA; eager (and CPU) pays the cast every call, so int8 pays mostly compiled on a GPU.

It is never on by default: `quantize: int8` is an autotune dimension whose divergence from the unquantized weights
(greedy codes agreement over N frames, logit cosine) is written in the profile, and the choice rule refuses it past
the stated bound (csm_runtime/tuning/choice.py). Embeddings, norms, lm_head and the codebook heads stay as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QUANTIZE_MODES = ("off", "int8")


class Int8Linear(nn.Module):
    """nn.Linear with an int8 weight [out, in] and a per-output-channel scale [out] in the activation dtype."""

    def __init__(self, weight: Tensor, scales: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Symmetric per-channel quantisation: scale = max|w| / 127 per output row, w8 = round(w / scale)."""
        w = linear.weight.detach().float()
        scales = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        w8 = torch.round(w / scales[:, None]).clamp(-128, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(w8, scales.to(linear.weight.dtype), bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight.to(x.dtype)) * self.scales
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight"


def quantize_int8(model: nn.Module) -> int:
    """Replace every nn.Linear inside the backbone's and the depth decoder's layers with an Int8Linear, in place.
    Returns how many were replaced."""
    stacks = [model.backbone_model.layers, model.depth_decoder.model.layers]
    count = 0
    for stack in stacks:
        for parent in stack.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Int8Linear.from_linear(child))
                    count += 1
    return count


def apply_quantize(model: nn.Module, mode: str) -> int:
    """`quantize` setting -> the model changed in place (`off`: untouched). Raises ValueError on an unknown mode."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {mode!r}")
    return quantize_int8(model) if mode == "int8" else 0
