"""GPU naming shared by both planes: alias (`4090`) -> vast.ai name (`RTX 4090`) -> profile slug (`rtx-4090`).

This module has no dependencies on purpose: the control plane uses it to search offers and to find a profile,
and the runtime uses it to name the profile of the device it finds. One table, so the two sides never disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class UnknownGpuError(ValueError):
    """An alias that is not in the table; the message lists the known ones."""


@dataclass(frozen=True)
class Gpu:
    alias: str  # what users type: `4090`
    vast_name: str  # what vast.ai's offers call it: `RTX 4090`
    slug: str  # profile file name: `rtx-4090`
    nvml_patterns: tuple[str, ...]  # regexes matched against pynvml's device name
    # A family newer than the default image's CUDA (Blackwell, sm_120): the driver must support `min_cuda`, kernels
    # need torch >= `min_torch` built for it, and a box of it starts from `image` (PyTorch 2.7 release: "install
    # PyTorch with CUDA 12.8"; cu126 and older wheels have no sm_120 kernels).
    min_cuda: float | None = None
    min_torch: str | None = None
    image: str | None = None


BLACKWELL = {"min_cuda": 12.8, "min_torch": "2.7", "image": "pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime"}


GPUS: tuple[Gpu, ...] = (
    Gpu("3090", "RTX 3090", "rtx-3090", (r"RTX 3090\b(?! Ti)",)),
    Gpu("3090ti", "RTX 3090 Ti", "rtx-3090-ti", (r"RTX 3090 Ti",)),
    Gpu("4080", "RTX 4080", "rtx-4080", (r"RTX 4080\b(?! SUPER)",)),
    Gpu("4090", "RTX 4090", "rtx-4090", (r"RTX 4090",)),
    Gpu("5090", "RTX 5090", "rtx-5090", (r"RTX 5090",), **BLACKWELL),
    Gpu("A4000", "RTX A4000", "rtx-a4000", (r"RTX A4000",)),
    Gpu("A5000", "RTX A5000", "rtx-a5000", (r"RTX A5000",)),
    Gpu("A6000", "RTX A6000", "rtx-a6000", (r"RTX A6000",)),
    Gpu("6000ADA", "RTX 6000Ada", "rtx-6000-ada", (r"RTX 6000 Ada",)),
    Gpu("A10", "A10", "a10", (r"\bA10\b(?!0|G)",)),
    Gpu("A40", "A40", "a40", (r"\bA40\b",)),
    Gpu("L4", "L4", "l4", (r"\bL4\b",)),
    Gpu("L40", "L40", "l40", (r"\bL40\b(?!S)",)),
    Gpu("L40S", "L40S", "l40s", (r"\bL40S\b",)),
    Gpu("A100", "A100 SXM4", "a100-sxm4", (r"A100[- ]SXM4",)),
    Gpu("A100-PCIE", "A100 PCIE", "a100-pcie", (r"A100.*PCIe",)),
    Gpu("H100", "H100 SXM", "h100-sxm", (r"H100 80GB HBM3", r"H100 SXM")),
    Gpu("H100-PCIE", "H100 PCIE", "h100-pcie", (r"H100 PCIe",)),
    Gpu("H100-NVL", "H100 NVL", "h100-nvl", (r"H100 NVL",)),
    Gpu("H200", "H200", "h200", (r"\bH200\b",)),
)

_BY_KEY = {}
for _gpu in GPUS:
    for _key in (_gpu.alias, _gpu.vast_name, _gpu.slug):
        _BY_KEY[_key.lower().replace(" ", "").replace("-", "").replace("_", "")] = _gpu


def known_aliases() -> list[str]:
    return [g.alias for g in GPUS]


def resolve(name: str) -> Gpu:
    """Accept an alias, a vast name or a slug, in any case (`4090`, `RTX_4090`, `rtx-4090`)."""
    key = name.strip().lower().replace(" ", "").replace("-", "").replace("_", "")
    if key.startswith("rtx") and key[3:] in _BY_KEY:
        key = key[3:]
    gpu = _BY_KEY.get(key)
    if gpu is None:
        raise UnknownGpuError(f"unknown GPU {name!r}; known: {', '.join(known_aliases())}")
    return gpu


def version_tuple(text: str) -> tuple[int, ...]:
    """`2.6.0+cu124` -> (2, 6, 0): for comparing a pin with a family's floor."""
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+", 1)[0])[:3])


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def slug_for_device(nvml_name: str) -> str:
    """Profile slug for the name pynvml reports (`NVIDIA GeForce RTX 4090` -> `rtx-4090`).

    A GPU missing from the table still gets a stable slug from its own name, so a profile can be written for it.
    """
    for gpu in GPUS:
        if any(re.search(p, nvml_name, re.IGNORECASE) for p in gpu.nvml_patterns):
            return gpu.slug
    return slugify(re.sub(r"^(NVIDIA\s+)?(GeForce\s+)?", "", nvml_name, flags=re.IGNORECASE))


def cpu_slug(cpu_model: str) -> str:
    """Profile slug for a CPU-only host (`AMD EPYC 7B13 64-Core Processor` -> `cpu-amd-epyc-7b13`)."""
    name = re.sub(r"\(R\)|\(TM\)|\bCPU\b|@.*$|\d+-Core Processor|Processor", " ", cpu_model, flags=re.IGNORECASE)
    return "cpu-" + (slugify(name) or "unknown")
