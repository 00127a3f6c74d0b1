"""What an autotune sweep measures: the candidate settings per device kind, and which ones a device cannot run.

A candidate is (dtype, compile mode, CUDA graphs, batch); a setting is a candidate without its batch. Settings the
device cannot run (CUDA graphs on CPU, a graph capture a compile mode already does) are recorded as skipped with
`setting_skip_reason`, never measured with something else and never faked.
"""

from __future__ import annotations

from dataclasses import dataclass

PROMPT = "The quick brown fox jumps over the lazy dog, then takes a short nap in the afternoon sun."
GRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")  # these capture CUDA graphs themselves


@dataclass(frozen=True)
class Plan:
    """What to sweep. `default_plan` gives the full and quick plans per device kind."""

    dtypes: tuple[str, ...]
    compile_modes: tuple[str, ...]
    cuda_graphs: tuple[bool, ...]
    batches: tuple[int, ...]
    first_chunk_frames: tuple[int, ...]
    warmup_frames: int
    timed_frames: int
    quick: bool = False
    stop_rtf: float = 1.0  # stop growing a setting's batch once RTF passes this
    rtf_max: float = 0.8
    ttfa_target_ms: float = 500.0
    prompt: str = PROMPT


def default_plan(device_kind: str, quick: bool = False, **changes) -> Plan:
    """Full: every compile mode, graphs on/off, batch up to 32. Quick: compile off vs default, batch up to 4.

    dtype: bf16 is the GPU default and float32 its reference; on CPU float32 is the default (bf16 matmuls are slow
    on most CPUs) and bf16 is measured only in the full sweep."""
    gpu = device_kind == "cuda"
    if quick:
        plan = Plan(
            dtypes=("bfloat16",) if gpu else ("float32",),
            compile_modes=("off", "default"),
            cuda_graphs=(False, True),
            batches=(1, 2, 4),
            first_chunk_frames=(1, 2),
            warmup_frames=2 if not gpu else 4,
            timed_frames=4 if not gpu else 16,
            quick=True,
        )
    else:
        plan = Plan(
            dtypes=("bfloat16", "float32") if gpu else ("float32", "bfloat16"),
            compile_modes=("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs"),
            cuda_graphs=(False, True),
            batches=(1, 2, 4, 8, 16, 32),
            first_chunk_frames=(1, 2, 4),
            warmup_frames=8,
            timed_frames=32,
        )
    return Plan(**{**plan.__dict__, **changes})


def setting_skip_reason(dtype: str, compile_mode: str, cuda_graphs: bool, device_kind: str) -> str | None:
    """Why a setting cannot (or need not) be measured on this device; None when it can."""
    if cuda_graphs and device_kind != "cuda":
        return f"CUDA graphs need a CUDA device; this is {device_kind}"
    if cuda_graphs and compile_mode in GRAPH_COMPILE_MODES:
        return f"compile mode {compile_mode} captures CUDA graphs itself: same as its graphs-off row"
    if dtype == "float16" and device_kind != "cuda":
        return "float16 is a GPU dtype; CPU matmuls in float16 are emulated"
    return None


def candidate_id(dtype: str, compile_mode: str, cuda_graphs: bool, batch: int) -> str:
    return f"{dtype}/{compile_mode}/{'graphs' if cuda_graphs else 'no-graphs'}/b{batch}"


def planned_settings(plan: Plan) -> list[tuple[str, str, bool]]:
    return [(d, c, g) for d in plan.dtypes for c in plan.compile_modes for g in plan.cuda_graphs]
