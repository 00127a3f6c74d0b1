"""float32 linear layers through oneDNN with weights packed once, so batched streams pay for the weights once on a CPU.

torch's CPU `linear` calls MKL. On this project's development CPU (AMD EPYC, AVX2, no AVX-512) MKL's GEMM for a few
rows costs about one GEMV per row: a 2048x8192 layer takes ~6 ms for one row and ~30 ms for eight, so eight batched
streams are barely faster than eight one after another (bench/README.md, `bench_generator.py`). oneDNN's matmul over a
weight packed for its blocking reads the weight once for all rows: ~10 ms for eight. For a single row MKL's GEMV is
~15-25 % faster, so `cpu_linear: auto` packs only when the generator batches (`max_streams` > 1), only eager
(torch.compile's inductor lowers the packed op only for weights it froze itself), and only layers of at least
1024 x 1024 (for small ones oneDNN's per-call cost outweighs the saving); `onednn` packs every one.

Only float32 on a CPU: oneDNN's bf16 path needs AVX-512 or AVX-NE-CONVERT, and CUDA has its own kernels. The packed
weight replaces the plain one (no second copy). Covered: every nn.Linear in the backbone's and the depth decoder's
layers, the decoder's input projection and `lm_head` (the codebook heads are indexed per step and stay as they are).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

CPU_LINEAR_MODES = ("auto", "onednn", "mkl")
# `auto` packs only weights at least this big (1024 x 1024): for small layers oneDNN's per-call cost outweighs what
# packing saves (tiny-random's 128-wide layers batch faster on MKL: bench/README.md)
AUTO_MIN_ELEMENTS = 1 << 20


def onednn_available() -> bool:
    """oneDNN is compiled in and exposes the packed linear op (torch's own CPU builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def wants_packing(
    mode: str, device: torch.device, dtype: torch.dtype, max_streams: int, quantize: str, compile_mode: str
) -> bool:
    """Whether a model for these settings gets packed linears. Raises ValueError on an unknown mode."""
    if mode not in CPU_LINEAR_MODES:
        raise ValueError(f"cpu_linear must be one of {', '.join(CPU_LINEAR_MODES)}, got {mode!r}")
    if mode == "mkl" or device.type != "cpu" or dtype != torch.float32 or quantize != "off":
        return False
    if compile_mode != "off":  # inductor lowers the packed op only for weights it froze itself
        if mode == "onednn":
            raise ValueError("cpu_linear onednn runs eager only: use compile off (or cpu_linear auto)")
        return False
    if not onednn_available():
        if mode == "onednn":
            raise ValueError("cpu_linear onednn: this torch has no oneDNN packed linear (torch.ops.mkldnn)")
        return False
    return mode == "onednn" or max_streams > 1


class PackedLinear(nn.Module):
    """nn.Linear whose weight is a oneDNN tensor in the matmul's own layout (packed for `batch_hint` rows; any
    number of rows works)."""

    def __init__(self, linear: nn.Linear, batch_hint: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN packed"


def pack_linears(model: nn.Module, batch_hint: int = 8, min_elements: int = 0) -> int:
    """Replace the frame step's nn.Linear modules (see the module docstring) whose weight has at least `min_elements`
    entries with PackedLinear, in place. Returns how many were replaced."""
    targets = [
        (parent, name)
        for stack in (model.backbone_model.layers, model.depth_decoder.model.layers)
        for parent in stack.modules()
        for name, _ in parent.named_children()
    ]
    targets += [(model.depth_decoder.model, "inputs_embeds_projector"), (model, "lm_head")]
    count = 0
    for parent, name in targets:
        child = getattr(parent, name, None)
        if isinstance(child, nn.Linear) and child.weight.numel() >= min_elements:
            setattr(parent, name, PackedLinear(child, batch_hint))
            count += 1
    return count
