"""`make gpu-check`'s CPU dry run: the same script a GPU machine runs, on tiny-random with tiny frame counts, so it
cannot rot between the rare GPU runs. Every part reports its status; the CUDA parts say they were skipped and why
(never a faked number); OUT holds what the device tool can bring back (at most 8 files, 2 folders deep). Beside it:
the stop at once without wheels, the limit that ends autotune's whole process tree (real processes), and the
budget arithmetic. The GPU itself is what cannot exist here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from csm_runtime.tuning.identity import detect_device
from csm_runtime.tuning.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check_budget as budget  # noqa: E402
from gpu_check_correctness import batch_status  # noqa: E402
from gpu_check_procs import run_bounded  # noqa: E402

ORDER = ["wheels", "env", "correctness", "bench", "graphs", "autotune", "compiled"]  # cheap first, compiled last
DRY_TIMEOUT_S = 540  # under pytest's 600 s per test (pyproject), above the dry run's worst case (budget)
PYTHON = str(ROOT / ".venv" / "bin" / "python")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check-out")
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_PYTHON": PYTHON, "OUT": str(out), "CSM_CPU_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("NO_TORCH_COMPILE", None)
    script = str(ROOT / "scripts" / "gpu_check.sh")
    proc = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=DRY_TIMEOUT_S, cwd="/")
    return out, proc


def test_dry_run_passes_and_prints_the_table_of_parts_in_order(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, (out / "log.txt").read_text()[-3000:]
    for text in (proc.stdout, (out / "summary.md").read_text()):
        assert text.startswith("# GPU check (CPU dry run)")
        assert "| part | status | seconds used | limit s | result |" in text
        rows = re.findall(r"^\| (\w+) \| (\w+) \| ([\d.]+) \| (\d+) \|", text, re.M)
        assert [r[0] for r in rows] == [*ORDER, "total"]
        limits = budget.limits(dry=True)
        assert all(int(limit) == limits[name] for name, _, _, limit in rows[:-1])
        assert rows[-1][1] == "pass" and float(rows[-1][2]) == pytest.approx(sum(float(r[2]) for r in rows[:-1]), 0.01)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files)


def test_parts_run_cheap_first_graphs_next_compiled_last(dry_run):
    out, _ = dry_run
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["part"] for r in runs] == ORDER
    started = [m.group(1) for m in re.finditer(r"part (\w+) \(limit", (out / "log.txt").read_text())]
    assert started == ORDER[1:]  # the wheels are skipped in the dry run


def test_no_torch_compile_is_set_wherever_no_compile_was_asked(dry_run):
    out, _ = dry_run
    parts = json.loads((out / "results.json").read_text())["parts"]
    seen = {name: p["environment"]["NO_TORCH_COMPILE"] for name, p in parts.items()}
    assert seen == {"env": "1", "correctness": "1", "bench": "1", "graphs": "1", "autotune": "1", "compiled": None}
    assert parts["autotune"]["numbers"]["child_no_torch_compile"] == "1"  # the autotune process and its server


def test_every_part_reports_its_status_and_cuda_parts_are_skipped_with_the_reason(dry_run):
    out, _ = dry_run
    results = json.loads((out / "results.json").read_text())
    assert results["dry_run"] is True
    parts = results["parts"]
    assert set(parts) == set(ORDER[1:])
    assert all(p["status"] in ("pass", "skipped") for p in parts.values()), {k: p["status"] for k, p in parts.items()}
    assert parts["graphs"]["status"] == parts["compiled"]["status"] == "skipped"
    checks = {c["name"]: c for p in parts.values() for c in p["checks"]}
    assert checks["tiny-random float32 6 frames == transformers generate (cpu)"]["status"] == "pass"
    assert checks["float32: stream 0 alone == in a batch of 8 (eager)"]["status"] == "pass"  # exact on CPU
    for name in ("cuda", "float32: CUDA graph replay == eager", "compile off, graphs on"):
        detail = checks[name]["detail"]
        assert checks[name]["status"] == "skipped" and ("no CUDA" in detail or "CUDA graphs need" in detail), name
    assert "inductor" in checks["compile default, graphs off"]["detail"]
    assert checks["csm-1b-random == transformers generate"]["detail"] == "dry run: tiny-random only"
    assert checks["streaming Mimi audio == one-shot decode (cpu, full-size Mimi, 4 frames)"]["status"] == "pass"
    assert checks["float32 stream joining a running batch == alone (eager)"]["status"] == "pass"
    rows = results["bench"]["rows"]
    assert {r["impl"] for r in rows} == {"hf-generate", "ours"} and {r["batch"] for r in rows} == {1, 2}
    assert all(r["ms_per_frame"] > 0 for r in rows)


def test_autotune_part_leaves_a_checked_profile_its_plot_and_its_streamed_rows(dry_run):
    out, _ = dry_run
    slug = detect_device("cpu").slug
    profile = load_profile(out / f"{slug}.yaml")
    assert profile.identity.model.id == "tiny-random" and profile.delivery is not None
    assert (out / f"{slug}.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "results.json").read_text())
    assert results["parts"]["autotune"]["numbers"]["summary"]["chosen"] == profile.chosen.candidate
    events = [json.loads(x)["event"] for x in (out / "autotune_rows.jsonl").read_text().splitlines()]
    assert events.count("row") >= 2 and results["parts"]["autotune"]["numbers"]["rows_streamed"] == events.count("row")


def _copy_script(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    for name in ("gpu_check.sh", "gpu_check_budget.py"):
        shutil.copy(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    return tmp_path / "scripts" / "gpu_check.sh"


def _run_on_gpu_machine(script: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_CHECK_PYTHON": PYTHON, "OUT": str(tmp_path / "out"), "GPU_CHECK_SITE": str(tmp_path)}
    env.pop("GPU_CHECK_DRY_RUN", None)
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)


def test_without_wheels_the_check_stops_at_once_with_one_line(tmp_path):
    proc = _run_on_gpu_machine(_copy_script(tmp_path), tmp_path)
    assert proc.returncode != 0 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert "no wheels in .whl/" in line and "make fetch-gpu-wheels" in line
    assert "part " not in (tmp_path / "out" / "log.txt").read_text()


def test_wheels_that_do_not_install_stop_the_check_at_once_with_one_line(tmp_path):
    script = _copy_script(tmp_path)
    (tmp_path / ".whl").mkdir()
    (tmp_path / ".whl" / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip file")
    proc = _run_on_gpu_machine(script, tmp_path)
    assert proc.returncode != 0 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert "did not install" in line
    assert "part " not in (tmp_path / "out" / "log.txt").read_text()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_a_limit_ends_the_whole_process_tree_a_server_in_its_own_session_included(tmp_path):
    """Like autotune's delivery check: the command starts a server in a session of its own, which ignores SIGTERM."""
    pidfile = tmp_path / "server.pid"
    tree = f"( trap '' TERM; exec setsid sleep 120 ) & echo $! > {pidfile}; sleep 120"
    result = run_bounded(["sh", "-c", tree], limit_s=2, grace_s=1)
    server = int(pidfile.read_text())
    try:
        assert result.timed_out and result.returncode is None
        assert server in result.groups_ended  # its own group, found before its parent died
        assert not _alive(server)
    finally:
        if _alive(server):
            os.kill(server, 9)


def test_batch_of_1_against_8_is_a_figure_on_cuda_and_exact_on_cpu():
    assert batch_status("cuda", "float32", identical=False) == "info"
    assert batch_status("cuda", "bfloat16", identical=True) == "info"
    assert batch_status("cpu", "float32", identical=False) == "fail"
    assert batch_status("cpu", "float32", identical=True) == "pass"
    assert batch_status("cpu", "bfloat16", identical=False) == "info"


def test_the_limits_fit_the_device_budget_and_the_test_timeouts(request):
    gpu = budget.limits(dry=False)
    assert budget.worst_case_s(gpu) <= 600  # one device command
    assert budget.worst_case_s(gpu) + 240 + 30 <= 900  # 15 minutes, a 4-minute start and the transfers included
    assert budget.worst_case_s(budget.limits(dry=True)) < DRY_TIMEOUT_S < float(request.config.getini("timeout"))
