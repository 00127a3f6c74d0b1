"""The GPU check's autotune part: `csm-runtime autotune --quick` with its HTTP delivery check, under the part's limit.

Its rows stream into OUT/autotune_rows.jsonl as they are measured (`--progress-jsonl`), so a limit reached mid-sweep
keeps every finished row; the limit ends the whole process tree, the delivery check's server included
(gpu_check_procs.py). Compile is left out of the sweep by default: the compiled rows run last, in their own part, so
a compile that takes minutes cannot cost the profile (GPU_CHECK_AUTOTUNE_COMPILE=off,default puts it back)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from gpu_check_procs import run_bounded
from gpu_check_record import DRY, ROOT, Part

GRACE_S = 8  # of the part's limit: time to end the tree and write the record before the script's own timeout
DRY_OPTIONS = [
    *("--model", "tiny-random", "--device", "cpu", "--cpu-threads", "1", "--compile", "off", "--batches", "1,2"),
    *("--warmup-frames", "1", "--timed-frames", "3", "--rounds", "2"),
    *("--check-rounds", "1", "--check-frames", "6", "--check-tolerance", "1000"),
]


def command(out: Path, rows: Path) -> list[str]:
    cmd = [sys.executable, "-m", "csm_runtime", "autotune", "--quick", "--out", str(out), "--json"]
    cmd += ["--progress-jsonl", str(rows)]
    if DRY:
        return cmd + DRY_OPTIONS
    compile_modes = os.environ.get("GPU_CHECK_AUTOTUNE_COMPILE", "off")
    return cmd + ["--model", "csm-1b-random", "--device", "cuda", "--rounds", "2", "--compile", compile_modes]


def measured_rows(path: Path) -> int:
    """How many measured rows autotune streamed (its `row` events; the file also holds start, rounds, the server)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for x in lines if x.startswith("{") and json.loads(x).get("event") == "row")


def part_autotune(work: Path, out: Path, limit_s: float) -> None:
    part = Part("autotune", work)
    profiles, rows = work / "profiles", out / "autotune_rows.jsonl"
    cmd = command(profiles, rows)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    deadline = max(5.0, limit_s - GRACE_S)
    part.numbers(command=" ".join(cmd), deadline_s=deadline, child_no_torch_compile=env.get("NO_TORCH_COMPILE"))
    if not DRY and os.environ.get("GPU_CHECK_AUTOTUNE_COMPILE", "off") == "off":
        part.check("compile modes", "info", "compile left out of the sweep: the compiled rows run last, in `compiled`")
    stdout, stderr = work / "autotune.stdout", work / "autotune.stderr"
    with stdout.open("w") as so, stderr.open("w") as se:
        result = run_bounded(cmd, deadline, env=env, cwd=ROOT, stdout=so, stderr=se)
    sys.stderr.write(stderr.read_text()[-6000:])
    part.numbers(exit_code=result.returncode, rows_streamed=measured_rows(rows))
    if result.timed_out:
        part.numbers(groups_ended=list(result.groups_ended))
        part.check(
            "autotune --quick",
            "fail",
            f"stopped at {deadline:.0f} s, its process groups {list(result.groups_ended)} ended; "
            f"{measured_rows(rows)} measured rows kept in autotune_rows.jsonl",
        )
        part.finish("timeout")
        return
    summary = next((json.loads(x) for x in reversed(stdout.read_text().splitlines()) if x.startswith("{")), None)
    if result.returncode != 0 or summary is None:
        tail = (stderr.read_text().strip().splitlines() or ["no output"])[-1]
        part.check("autotune --quick", "fail", f"exit {result.returncode}: {tail}"[:500])
        rejected = list(profiles.glob("*.rejected.yaml"))
        if rejected:
            part.numbers(rejected_profile=str(rejected[0]))
        part.finish()
        return
    part.numbers(summary=summary)
    part.check(
        "autotune --quick",
        "pass",
        f"chose {summary['chosen']} ({summary['settings']['max_streams']} "
        f"stream(s), realtime {summary['realtime']}) -> {Path(summary['profile']).name}",
    )
    _delivery(part, summary.get("delivery"))
    part.finish()


def _delivery(part: Part, d: dict | None) -> None:
    if d is None:
        part.check("delivery check", "fail", "the profile has no delivery block")
        return
    try:
        figures = (
            f"RTF {d['predicted_rtf']:.3f} -> {d['delivered_rtf']:.3f}, "
            f"TTFA {d['predicted_ttfa_ms']:.0f} -> {d['delivered_ttfa_ms']:.0f} ms"
        )
    except (KeyError, TypeError, ValueError):  # another shape of the block: its figures as they are
        figures = ", ".join(f"{k} {v}" for k, v in d.items() if isinstance(v, int | float) and k != "ok")
    if DRY:
        part.check("delivery check", "info", f"ran (tolerance widened for the dry run): {figures}")
    else:
        # Autotune fails (non-zero exit) only when the served setting does not serve; a delivery off its prediction
        # is recorded as the profile's figures, so here it is a figure, not a failure.
        within = "within 25 % of the sweep" if d.get("ok") else "off the sweep's prediction; delivered figures kept"
        part.check("delivery check", "pass" if d.get("ok") else "info", f"{figures} ({within})")
