"""What machine and software a measurement was taken on: the identity block of a profile, and the profile slug.

The slug comes from `csm_common/gpus.py` (the same table the control plane searches offers with), so a profile written
on the box is found by name on both sides. Reading facts never initialises CUDA: pynvml first, torch's view second,
so `serve --profile auto` can pick the profile before the model is built.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from dataclasses import dataclass

from csm_common.gpus import cpu_slug, slug_for_device


@dataclass(frozen=True)
class DeviceFacts:
    kind: str  # cuda | cpu
    slug: str  # profile file name: `rtx-4090`, `h100-sxm`, `cpu-amd-epyc`
    name: str  # the GPU name pynvml reports, or the CPU model
    cpu_model: str
    cpu_cores: int  # logical cores this process may use
    host_memory_mb: int | None
    gpu_memory_mb: int | None = None
    compute_capability: str | None = None
    driver: str | None = None
    cuda: str | None = None  # CUDA version torch was built with (the runtime the kernels use)
    gpu_count: int | None = None


def cpu_model() -> str:
    """`model name` from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _host_memory_mb() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total // 2**20)
    except ImportError:
        return None


def _nvml_gpu(index: int) -> dict | None:
    """GPU facts from NVML; None when there is no NVIDIA driver (NVMLError_LibraryNotFound on CPU boxes)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        return {
            "name": name.decode() if isinstance(name, bytes) else name,
            "memory_mb": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20),
            "compute_capability": f"{major}.{minor}",
            "driver": _text(pynvml.nvmlSystemGetDriverVersion()),
            "count": int(pynvml.nvmlDeviceGetCount()),
        }
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _torch_gpu(index: int) -> dict | None:
    import torch  # only when NVML had no answer: the device probe stays light (deploy runs it on the box)

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(index)
    return {
        "name": props.name,
        "memory_mb": int(props.total_memory // 2**20),
        "compute_capability": f"{props.major}.{props.minor}",
        "driver": None,
        "count": torch.cuda.device_count(),
    }


def _wants_cpu(device: str) -> bool:
    return device == "cpu" or device.startswith("cpu:")


def detect_device(device: str = "auto") -> DeviceFacts:
    """Facts about the device the runtime will use (`device` is RuntimeSettings.device: auto | cpu | cuda[:N])."""
    cpu = cpu_model()
    base = {"cpu_model": cpu, "cpu_cores": _cpu_cores(), "host_memory_mb": _host_memory_mb()}
    if not _wants_cpu(device):
        index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
        gpu = _nvml_gpu(index) or _torch_gpu(index)
        if gpu is not None:
            import torch  # a GPU is there, so the runtime (and torch) will run on it anyway

            return DeviceFacts(
                kind="cuda",
                slug=slug_for_device(gpu["name"]),
                name=gpu["name"],
                gpu_memory_mb=gpu["memory_mb"],
                compute_capability=gpu["compute_capability"],
                driver=gpu["driver"],
                cuda=torch.version.cuda,
                gpu_count=gpu["count"],
                **base,
            )
    return DeviceFacts(kind="cpu", slug=cpu_slug(cpu), name=cpu, **base)


def package_versions() -> dict[str, str]:
    """The versions a profile's numbers depend on; a missing package reads `absent`."""
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "moshi"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out
