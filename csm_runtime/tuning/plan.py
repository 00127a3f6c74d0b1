"""What an autotune sweep measures: the candidate settings per device kind, and which ones a device cannot run.

A candidate is (dtype, quantize, compile mode, CUDA graphs, batch); a setting is a candidate without its batch.
Settings the device cannot run (CUDA graphs on CPU, a graph capture a compile mode already does) are recorded as
skipped with `setting_skip_reason`, never measured with something else and never faked.

How much is measured is part of the plan, because a profile must predict what a server then delivers: every
candidate gets `rounds` rounds of `warmup_frames` + `timed_frames`, the rounds interleaved across candidates so a
change of load hits them all alike, rounds that disagree by more than `spread_limit` are measured again, and the HTTP
delivery check (`check_*`) serves the chosen setting afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

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
    quantize: tuple[str, ...] = ("off",)
    rounds: int = 3  # interleaved rounds per candidate; the profile keeps each round's ms/frame and their spread
    spread_limit: float = 0.5  # rounds further apart than this ((slowest - fastest) / median) are measured again
    quick: bool = False
    stop_rtf: float = 1.0  # stop growing a setting's batch once its first round passes this RTF
    rtf_max: float = 0.8
    ttfa_target_ms: float = 500.0
    prompt: str = PROMPT
    # int8 against the same dtype unquantized: refused by the rule past these bounds
    divergence_frames: int = 16
    min_codes_agreement: float = 0.9
    min_logit_cosine: float = 0.995
    # the delivery check: serve the choice over HTTP and compare with the prediction
    check: bool = True
    check_rounds: int = 5
    check_frames: int = 24  # audio frames of the probe request
    check_tolerance: float = 0.25
    check_ttfa_slack_ms: float = 10.0  # loopback HTTP (request, response head) is not in the sweep's TTFA
    check_attempts: int = 3  # measured again while delivery and prediction, or the rounds, disagree (at most)
    check_budget_s: float = 120.0  # once the check has measured this long: no new attempt, and 3 rounds an attempt


def default_plan(device_kind: str, quick: bool = False, **changes) -> Plan:
    """Full: every compile mode, graphs on/off, int8 on GPU, batch up to 128 on GPU (32 on CPU). Quick: compile off vs
    default, a few batches.

    dtype: bf16 is the GPU default and float32 its reference; on CPU float32 is the default (bf16 matmuls are slow
    on most CPUs) and bf16 is measured only in the full sweep. Timed frames: enough that a frame's jitter averages
    out (a CPU step varies by tens of percent under load, hence more rounds there)."""
    gpu = device_kind == "cuda"
    if quick:
        plan = Plan(
            dtypes=("bfloat16",) if gpu else ("float32",),
            compile_modes=("off", "default"),
            cuda_graphs=(False, True),
            batches=(1, 4, 16, 64) if gpu else (1, 2, 4),
            first_chunk_frames=(1, 2),
            warmup_frames=4 if gpu else 3,
            timed_frames=24 if gpu else 12,
            rounds=3,
            quick=True,
        )
    else:
        plan = Plan(
            dtypes=("bfloat16", "float32") if gpu else ("float32", "bfloat16"),
            compile_modes=("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs"),
            cuda_graphs=(False, True),
            batches=(1, 2, 4, 8, 16, 32, 64, 128) if gpu else (1, 2, 4, 8, 16, 32),
            first_chunk_frames=(1, 2, 4),
            warmup_frames=8,
            timed_frames=32,
            quantize=("off", "int8") if gpu else ("off",),
            rounds=3 if gpu else 5,
        )
    return Plan(**{**plan.__dict__, **changes})


class Setting(NamedTuple):
    """A candidate without its batch: one generator measures every batch of it."""

    dtype: str
    quantize: str
    compile: str
    cuda_graphs: bool


def setting_skip_reason(
    dtype: str, compile_mode: str, cuda_graphs: bool, device_kind: str, quantize: str = "off"
) -> str | None:
    """Why a setting cannot (or need not) be measured on this device; None when it can."""
    if cuda_graphs and device_kind != "cuda":
        return f"CUDA graphs need a CUDA device; this is {device_kind}"
    if cuda_graphs and compile_mode in GRAPH_COMPILE_MODES:
        return f"compile mode {compile_mode} captures CUDA graphs itself: same as its graphs-off row"
    if dtype == "float16" and device_kind != "cuda":
        return "float16 is a GPU dtype; CPU matmuls in float16 are emulated"
    if quantize == "int8" and dtype == "float32":
        return "int8 weights are measured against the 16-bit dtype they replace, not float32"
    return None


def setting_id(dtype: str, compile_mode: str, cuda_graphs: bool, quantize: str = "off") -> str:
    weights = dtype if quantize == "off" else f"{dtype}+{quantize}"
    return f"{weights}/{compile_mode}/{'graphs' if cuda_graphs else 'no-graphs'}"


def candidate_id(dtype: str, compile_mode: str, cuda_graphs: bool, batch: int, quantize: str = "off") -> str:
    return f"{setting_id(dtype, compile_mode, cuda_graphs, quantize)}/b{batch}"


def planned_settings(plan: Plan) -> list[Setting]:
    """Every setting of the plan, unquantized before int8 of the same dtype (int8 is compared with it)."""
    return [
        Setting(d, q, c, g)
        for d in plan.dtypes
        for q in plan.quantize
        for c in plan.compile_modes
        for g in plan.cuda_graphs
    ]
