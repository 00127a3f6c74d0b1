"""The GPU check's order and time limits, in one place (scripts/gpu_check.sh reads them; the dry-run test checks them).

Order: what a time limit would lose is the least valuable part. Cheap correctness and eager rows first, CUDA graphs
next (graph-replay checks, graph rows, the autotune sweep of eager and graph settings), compiled rows last (inductor
compiles take minutes).

The arithmetic, for the first machine lent (one try of 15 minutes of device time, start-up included):
    900 s device time - up to 240 s machine start - ~30 s transfers (22 MiB of tree and wheels in, <= 8 files out)
    = 630 s for the check; one device command runs at most 600 s.
    Parts' limits: 40 + 40 + 70 + 60 + 90 + 140 + 80 = 520 s, summary 20 s: 540 s.
    Each part may overrun its limit by KILL_AFTER_S before SIGKILL: 540 + 8 x 5 = 580 s, under the 600 s command.
The CPU dry run (tests/integration/test_gpu_check.py) gets its own, larger caps (a busy 2-core box is slow), which
add up to less than the test's own timeout, itself under pytest's 600 s per test.
"""

from __future__ import annotations

import sys

PARTS = ("wheels", "env", "correctness", "bench", "graphs", "autotune", "compiled")  # in the order they run
COMPILE_PARTS = ("compiled",)  # the parts that ask for torch.compile; every other part runs with NO_TORCH_COMPILE=1
KILL_AFTER_S = 5
DEVICE_BUDGET_S = 900
STARTUP_S = 240 + 30
COMMAND_LIMIT_S = 600

GPU_LIMITS = {
    "wheels": 40,
    "env": 40,
    "correctness": 70,
    "bench": 60,
    "graphs": 90,
    "autotune": 140,
    "compiled": 80,
    "summary": 20,
}
DRY_LIMITS = {  # 490 s, at most 530 s with the graces: under the dry-run test's 540 s
    "wheels": 0,  # the dry run uses this machine's .venv
    "env": 60,
    "correctness": 130,
    "bench": 90,
    "graphs": 15,  # nothing to run on CPU: every check skipped with its reason, torch not even imported
    "autotune": 160,
    "compiled": 15,  # likewise: inductor compiles take minutes on a CPU
    "summary": 20,
}


def limits(dry: bool) -> dict[str, int]:
    return dict(DRY_LIMITS if dry else GPU_LIMITS)


def worst_case_s(table: dict[str, int]) -> int:
    """The longest the whole check can run: every limit reached, and every kill's grace."""
    return sum(table.values()) + KILL_AFTER_S * len(table)


def main() -> int:
    """`python scripts/gpu_check_budget.py 0|1`: the table as bash declarations for gpu_check.sh."""
    table = limits(sys.argv[1:2] == ["1"])
    print("declare -A LIMIT=(" + " ".join(f"[{k}]={v}" for k, v in table.items()) + ")")
    print("PARTS=(" + " ".join(PARTS[1:]) + ")")  # the wheels are installed by the script itself
    print(f"COMPILE_PARTS=' {' '.join(COMPILE_PARTS)} '")
    print(f"KILL_AFTER={KILL_AFTER_S}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
