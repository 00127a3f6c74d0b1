"""`csm-runtime info`: what this machine offers the runtime (torch, CUDA, GPUs via NVML, CPU, RAM); works with no GPU.

Usage (listed in cli.py):
    csm-runtime info
    csm-runtime info --json | jq .gpus
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Any

from csm_runtime.tuning.identity import cpu_model


def _gpus() -> tuple[list[dict[str, Any]], str | None]:
    """GPUs from NVML (name, memory, compute capability, driver); (empty list, reason) when there are none."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound and friends: no driver on this machine
        return [], f"NVML unavailable: {type(exc).__name__}"
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            name = pynvml.nvmlDeviceGetName(h)
            gpu = {
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else name,
                "memory_total_mib": mem.total // 2**20,
                "memory_free_mib": mem.free // 2**20,
                "compute_capability": f"{major}.{minor}",
                "driver": driver.decode() if isinstance(driver, bytes) else driver,
            }
            out.append(gpu)
        return out, None
    finally:
        pynvml.nvmlShutdown()


def collect_info() -> dict[str, Any]:
    import psutil
    import torch  # loaded only to report on it: `csm-runtime --help` stays fast

    gpus, reason = _gpus()
    mem = psutil.virtual_memory()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": gpus,
        "gpu_note": reason,
        "cpu": {
            "model": cpu_model(),
            "cores_physical": psutil.cpu_count(logical=False),
            "cores_logical": psutil.cpu_count(logical=True),
            "torch_threads": torch.get_num_threads(),
        },
        "ram": {"total_gib": round(mem.total / 2**30, 1), "available_gib": round(mem.available / 2**30, 1)},
    }


def format_info(info: dict[str, Any]) -> str:
    lines = [
        f"torch      {info['torch']} (CUDA build {info['torch_cuda'] or 'none'}, available: {info['cuda_available']})",
        f"cpu        {info['cpu']['model']} ({info['cpu']['cores_logical']} threads, torch uses "
        f"{info['cpu']['torch_threads']})",
        f"ram        {info['ram']['total_gib']} GiB ({info['ram']['available_gib']} GiB available)",
    ]
    for g in info["gpus"]:
        lines.append(
            f"gpu {g['index']}      {g['name']}, {g['memory_total_mib']} MiB, sm {g['compute_capability']}, "
            f"driver {g['driver']}"
        )
    if not info["gpus"]:
        lines.append(f"gpu        none ({info['gpu_note']})")
    return "\n".join(lines)


def build_parser(parser=None):
    p = parser or argparse.ArgumentParser(prog="csm-runtime info", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: list[str] | None = None, args=None) -> int:
    args = args if args is not None else build_parser().parse_args(argv)
    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
