"""`make gpu-check`'s CPU dry run: the same script a GPU machine runs, on tiny-random with tiny frame counts, so it
cannot rot between the rare GPU runs. Every part reports its status; the CUDA parts say they were skipped and why
(never a faked number); OUT holds what the device tool can bring back (at most 8 files, 2 folders deep)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from csm_runtime.tuning.identity import detect_device
from csm_runtime.tuning.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check-out")
    env = {
        **os.environ,
        "GPU_CHECK_DRY_RUN": "1",
        "GPU_CHECK_PYTHON": str(ROOT / ".venv" / "bin" / "python"),
        "OUT": str(out),
        "CSM_CPU_THREADS": "1",
    }
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=1500, cwd="/"
    )
    return out, proc


def test_dry_run_passes_and_writes_the_summary_table(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, (out / "log.txt").read_text()[-3000:]
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU check (CPU dry run)")
    assert "| part | status | time s (limit) | result |" in summary
    for part in ("env", "correctness", "bench", "autotune"):
        assert f"| {part} | " in summary
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files)


def test_every_part_reports_its_status_and_cuda_parts_are_skipped_with_the_reason(dry_run):
    out, _ = dry_run
    results = json.loads((out / "results.json").read_text())
    assert results["dry_run"] is True
    parts = results["parts"]
    assert set(parts) == {"env", "correctness", "bench", "autotune"}
    assert all(p["status"] in ("pass", "skipped") for p in parts.values()), {k: p["status"] for k, p in parts.items()}
    checks = {c["name"]: c for p in parts.values() for c in p["checks"]}
    assert checks["tiny-random float32 6 frames == transformers generate (cpu)"]["status"] == "pass"
    for name in ("cuda", "float32: CUDA graph replay == eager", "compile off, graphs on"):
        detail = checks[name]["detail"]
        assert checks[name]["status"] == "skipped" and ("no CUDA" in detail or "CUDA graphs need" in detail), name
    assert checks["csm-1b-random == transformers generate"]["detail"] == "dry run: tiny-random only"
    assert checks["streaming Mimi audio == one-shot decode (cpu, full-size Mimi, 4 frames)"]["status"] == "pass"
    assert checks["float32 stream joining a running batch == alone (eager)"]["status"] == "pass"
    rows = parts["bench"]["numbers"]["rows"]
    assert {r["impl"] for r in rows} == {"hf-generate", "ours"} and {r["batch"] for r in rows} == {1, 2}
    assert all(r["ms_per_frame"] > 0 for r in rows)


def test_autotune_part_leaves_a_checked_profile_and_its_plot(dry_run):
    out, _ = dry_run
    slug = detect_device("cpu").slug
    profile = load_profile(out / f"{slug}.yaml")
    assert profile.identity.model.id == "tiny-random" and profile.delivery is not None
    assert (out / f"{slug}.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "results.json").read_text())
    assert results["parts"]["autotune"]["numbers"]["summary"]["chosen"] == profile.chosen.candidate
