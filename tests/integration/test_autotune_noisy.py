"""Autotune on a noisy machine: a profile states what the server delivers, whatever the load; results stream to
`--progress-jsonl` as they are measured; a stop signal ends the delivery check's server with its process group.

Every autotune here is the real command on tiny-random on this CPU (compile off, few frames), with the delivery
check's real `csm-runtime serve` process. The load is real too: busy-loop processes on every core, on and off every
half second, bounded in time. Tests assert what was recorded and that nothing outlives autotune, never a speed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from csm_runtime.tuning.delivery import Reading, compare, go_on, measure_again, output_problem
from csm_runtime.tuning.identity import detect_device
from csm_runtime.tuning.plan import default_plan
from csm_runtime.tuning.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]
CSM = str(ROOT / ".venv" / "bin" / "csm-runtime")
SMALL = ["--model", "tiny-random", "--quick", "--device", "cpu", "--cpu-threads", "1", "--compile", "off",
         "--warmup-frames", "1", "--timed-frames", "3", "--stop-rtf", "1000", "--no-plot"]  # fmt: skip

BURST = """
import sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    busy = time.monotonic() + 0.5
    while time.monotonic() < busy:
        pass
    time.sleep(0.5)
"""


@pytest.fixture
def bursts():
    """One busy-loop process per core (at least 2), each busy 0.5 s then idle 0.5 s, for 120 s at most."""
    procs = [
        subprocess.Popen([sys.executable, "-c", BURST, "120"], start_new_session=True)
        for _ in range(max(2, os.cpu_count() or 2))
    ]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def gone(pid: int) -> bool:
    """No process with this pid is left (a zombie counts as gone: it runs nothing), nor any in its group."""
    try:
        os.killpg(pid, 0)
        return False
    except ProcessLookupError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# --- deciding when to measure again, and what does not serve --------------------------------------------------


def profile_predicting(rtf: float, ttfa: float):
    chosen = SimpleNamespace(
        candidate="float32/off/no-graphs/b2",
        settings=SimpleNamespace(first_chunk_frames=1, max_streams=2),
        measurement=SimpleNamespace(rtf=rtf, ttfa_ms={1: ttfa}),
    )
    return SimpleNamespace(chosen=chosen)


def test_measure_again_when_prediction_and_delivery_or_the_rounds_disagree():
    plan = default_plan("cpu", quick=True)
    profile = profile_predicting(0.5, 100.0)
    settled = compare(profile, plan, [0.5, 0.52, 0.49], [100.0, 104.0, 98.0])
    assert measure_again(settled, [0.5, 0.52, 0.49], [100.0, 104.0, 98.0], plan) is None
    # the case: a TTFA better than a noisy sweep's is a reason to measure again, never to refuse
    better = compare(profile_predicting(0.5, 1401.0), plan, [0.5] * 3, [483.0] * 3)
    assert "TTFA predicted 1401 ms, delivered 483 ms (-66%)" in measure_again(better, [0.5] * 3, [483.0] * 3, plan)
    rounds = [0.4, 0.5, 2.5]  # median on target, rounds far apart: one of them was disturbed
    agreeing_medians = compare(profile, plan, rounds, [100.0] * 3)
    assert agreeing_medians.ok and agreeing_medians.rtf_spread == pytest.approx(4.2)
    assert "the rounds disagree: RTF spread 420%" in measure_again(agreeing_medians, rounds, [100.0] * 3, plan)
    jitter = [60.0, 100.0, 140.0]  # TTFA samples swing on their own: the median decides, not the spread
    assert measure_again(compare(profile, plan, [0.5] * 3, jitter), [0.5] * 3, jitter, plan) is None


def test_measuring_again_stops_at_the_attempts_or_the_time_budget_and_says_why():
    plan = default_plan("cpu", quick=True)  # 3 attempts, 120 s
    assert go_on(None, 1, 1.0, plan) == (None, None)  # settled
    assert go_on("RTF differs", 1, 10.0, plan) == ("RTF differs", None)
    assert go_on("RTF differs", 3, 10.0, plan) == (None, "RTF differs; after 3 attempt(s)")
    assert go_on("RTF differs", 1, 300.0, plan) == (
        None,
        "RTF differs; not measured again: 300 s measured (budget 120 s)",
    )


@pytest.mark.parametrize(
    "reading,problem",
    [
        (Reading(nbytes=0, content_type="audio/pcm"), "no audio"),
        (Reading(nbytes=3841, content_type="audio/pcm"), "not whole 16-bit samples"),
        (Reading(nbytes=4 * 3840 + 2, content_type="audio/pcm"), "capped at 4 frames"),
        (Reading(nbytes=3840, content_type="application/json"), "not audio/pcm"),
        (Reading(nbytes=4 * 3840, content_type="audio/pcm"), None),
    ],
)
def test_wrong_output_is_named(reading, problem):
    got = output_problem(reading, frames=4)
    assert (got is None) if problem is None else (problem in got)


def test_a_server_that_does_not_start_is_a_serve_failure_and_leaves_no_process(tmp_path):
    from csm_runtime.settings import RuntimeSettings
    from csm_runtime.tuning.server_process import ServeFailure, ServerProcess, free_port

    empty = tmp_path / "token"
    empty.write_text("")  # serve refuses an empty token file at once
    settings = RuntimeSettings(model="tiny-random", device="cpu", port=free_port(), token_file=str(empty))
    server = ServerProcess(settings, tmp_path)
    with pytest.raises(ServeFailure, match=r"the server exited \(\d+\) while starting: .*is empty"):
        try:
            server.start(120)
        finally:
            server.stop()
    assert gone(server.pid)


# --- the real command under load, and stopped mid-check ----------------------------------------------------------


def test_autotune_under_bursts_of_load_writes_the_delivered_figures(tmp_path, bursts):
    """Default tolerance and attempts, while every core is loaded half of each second: the profile is written, and
    its figures are the delivered ones, whatever the sweep's rounds read."""
    out, log = tmp_path / "profiles", tmp_path / "rows.jsonl"
    cmd = [CSM, "autotune", *SMALL, "--batches", "1,2", "--rounds", "2", "--check-rounds", "2", "--check-frames", "6",
           "--out", str(out), "--progress-jsonl", str(log), "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    p = load_profile(out / f"{detect_device('cpu').slug}.yaml")
    f, d = p.chosen.figures, p.delivery
    assert f.source == "delivered" and (f.rtf, f.ttfa_ms) == (d.delivered_rtf, d.delivered_ttfa_ms)
    assert d.rounds == 2 * d.attempts and len(d.earlier) == d.attempts - 1
    lines = events(log)
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "done"
    assert lines[-1]["summary"]["figures"] == f.model_dump(mode="json")
    assert sum(e["event"] == "row" for e in lines) == len(p.candidates) == 4


def test_sigterm_during_the_delivery_check_ends_the_servers_group_and_keeps_every_measured_row(tmp_path):
    """SIGTERM once the delivery check measures: autotune exits 143, its server's process group is gone, and the
    progress file holds every sweep row, the rounds, and a last `stopped` line. On the way, the sweep measures again:
    a slow first round is confirmed by a second before the batch stops growing (a stop RTF no round can meet), and
    rounds that disagree get as many more (a spread limit no rounds can meet)."""
    out, log = tmp_path / "profiles", tmp_path / "rows.jsonl"
    cmd = [CSM, "autotune", *SMALL, "--batches", "1,2", "--rounds", "2", "--spread-limit", "1e-9", "--stop-rtf", "1e-6",
           "--check-rounds", "1000", "--check-frames", "6", "--out", str(out), "--progress-jsonl", str(log)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not any(e["event"] == "delivery_round" for e in events(log)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        server = next(e for e in events(log) if e["event"] == "server")
        assert not gone(server["pid"])  # serving, in a process group of its own
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("Error: stopped by SIGTERM")
    assert gone(server["pid"])
    lines = events(log)
    assert lines[-1] == {**lines[-1], "event": "stopped", "signal": "SIGTERM", "exit": 143}
    rows = [e["candidate"] for e in lines if e["event"] == "row"]
    measured = [r for r in rows if r["status"] == "measured"]
    assert len(rows) == 4 and len(measured) == 1  # b1 with graphs off; graphs on is skipped on CPU
    assert next(r for r in rows if r["id"] == "float32/off/no-graphs/b2")["reason"].endswith("in 2 rounds)")
    m = measured[0]["measurement"]
    assert m["rounds"] == 5 and m["extra_rounds"] == 3  # round 1 confirmed, round 2, then 2 more: they disagreed
    assert [e["extra"] for e in lines if e["event"] == "round"] == [False, True, False, True, True]
    assert not list(out.glob("*.yaml")) and not list(out.glob(".*checking*"))
