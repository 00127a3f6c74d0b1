"""Autotune: the choice rule on known tables (int8 refused past its divergence bound), the delivery comparison, and a
real quick sweep of tiny-random on this CPU through the command, whose profile validates (rounds, spread, the HTTP
delivery check), whose choice is the rule's best among the measured rows, and which the runtime applies; a delivery
that differs from the prediction is measured again and recorded as the profile's figures, never refused.

The sweep uses compile off only: an inductor compile of the tiny model takes minutes on a busy 2-core CI box, and the
compile path is the generator's (tested there). CUDA-graph rows are in the plan and must come back skipped on CPU.
The delivery check runs for real, but with a tolerance no timing can miss: tests never assert on speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
from pathlib import Path

import pytest

from csm_runtime.commands.autotune import main as autotune_main
from csm_runtime.tuning.apply import apply_profile
from csm_runtime.tuning.choice import AutotuneError, choose
from csm_runtime.tuning.delivery import compare
from csm_runtime.tuning.identity import detect_device
from csm_runtime.tuning.plan import candidate_id, default_plan, setting_skip_reason
from csm_runtime.tuning.profile import Candidate, Divergence, Measurement, Rule, load_profile

ROOT = Path(__file__).resolve().parents[2]
RULE = Rule(rtf_max=0.8, ttfa_target_ms=300, text="test")


def row(compile_mode: str, batch: int, rtf: float | None, ttfa: float = 100.0, graphs: bool = False,
        status: str = "measured", quantize: str = "off", agreement: float | None = None) -> Candidate:  # fmt: skip
    m = None
    if rtf is not None:
        m = Measurement(frames_timed=4, ms_per_frame_p50=rtf * 80, ms_per_frame_p95=rtf * 80,
                        ms_per_frame_mean=rtf * 80, rtf=rtf, ttfa_ms={1: ttfa, 2: ttfa + 60, 4: ttfa + 180},
                        prefill_ms=1, peak_memory_mb=1, memory_kind="process_rss", compile_s=0, warmup_s=0,
                        cuda_graphs_active=graphs)  # fmt: skip
    div = None
    if agreement is not None:
        div = Divergence(
            reference="bfloat16/off/no-graphs",
            frames=16,
            codes_agreement=agreement,
            logit_cosine=0.999,
            within_bound=agreement >= 0.9,
        )
    return Candidate(id=candidate_id("bfloat16", compile_mode, graphs, batch, quantize), dtype="bfloat16",
                     quantize=quantize, compile=compile_mode, cuda_graphs=graphs, batch=batch, status=status,
                     measurement=m, reason=None if status == "measured" else "test", divergence=div)  # fmt: skip


# --- the rule ---------------------------------------------------------------------------------------------------


def test_most_streams_within_rtf_and_ttfa_wins():
    table = [
        row("off", 1, 0.30), row("off", 2, 0.50), row("off", 4, 0.90),  # b4 misses RTF 0.8
        row("default", 1, 0.20), row("default", 2, 0.35), row("default", 4, 0.60, ttfa=400),  # b4 misses TTFA
        row("default", 8, None, status="oom"),
    ]  # fmt: skip
    choice = choose(table, RULE, (1, 2, 4))
    assert choice.realtime and choice.settings.max_streams == 2
    # off/b2 and default/b2 both qualify at 2 streams: default has the lower single-stream latency (0.20 < 0.30)
    assert choice.candidate == "bfloat16/default/no-graphs/b2"
    assert choice.settings.first_chunk_frames == 4  # TTFA 100/160/280 ms: all within 300, take the largest
    assert "2 candidate(s) reach it" in choice.why


def test_first_chunk_is_the_largest_within_the_target():
    choice = choose([row("off", 1, 0.3, ttfa=50)], RULE, (1, 2, 4))
    assert choice.settings.first_chunk_frames == 4  # 50, 110, 230 ms all <= 300: take the most buffered audio
    choice = choose([row("off", 1, 0.3, ttfa=200)], RULE, (1, 2, 4))
    assert choice.settings.first_chunk_frames == 2  # 260 fits, 380 does not


def test_tie_on_streams_goes_to_lower_single_stream_latency_not_lower_batch_rtf():
    table = [
        row("off", 1, 0.10), row("off", 4, 0.70),  # fastest alone
        row("default", 1, 0.15), row("default", 4, 0.40),  # faster at batch 4, slower alone
    ]  # fmt: skip
    assert choose(table, RULE, (1,)).candidate == "bfloat16/off/no-graphs/b4"


def test_nothing_real_time_keeps_the_fastest_single_stream_and_says_so():
    table = [row("off", 1, 3.0), row("off", 2, 2.5), row("default", 1, 2.0), row("default", 2, 1.8)]
    choice = choose(table, RULE, (1, 2))
    assert not choice.realtime
    assert choice.candidate == "bfloat16/default/no-graphs/b1" and choice.settings.max_streams == 1
    assert "cannot serve this model in real time" in choice.why


def test_int8_is_chosen_only_within_its_divergence_bound():
    faster_int8 = [
        row("off", 1, 0.30),
        row("off", 2, 0.90),
        row("off", 1, 0.2, quantize="int8", agreement=0.5),
        row("off", 2, 0.5, quantize="int8", agreement=0.5),
    ]
    choice = choose(faster_int8, RULE, (1,))
    assert choice.candidate == "bfloat16/off/no-graphs/b1" and choice.settings.quantize == "off"
    assert "int8 candidate(s) were not considered" in choice.why
    close = [
        r.model_copy(update={"divergence": r.divergence.model_copy(update={"codes_agreement": 0.95})})
        if r.quantize == "int8"
        else r
        for r in faster_int8
    ]
    choice = choose(close, RULE, (1,))
    assert choice.candidate == "bfloat16+int8/off/no-graphs/b2" and choice.settings.quantize == "int8"
    unmeasured = [row("off", 1, 3.0), row("off", 1, 1.0, quantize="int8")]  # no divergence: never picked
    assert choose(unmeasured, RULE, (1,)).settings.quantize == "off"


def test_delivery_compares_medians_with_the_prediction_both_ways():
    from types import SimpleNamespace

    chosen = SimpleNamespace(
        candidate="float32/off/no-graphs/b2",
        settings=SimpleNamespace(first_chunk_frames=1, max_streams=2),
        measurement=SimpleNamespace(rtf=0.5, ttfa_ms={1: 100.0}),
    )
    profile = SimpleNamespace(chosen=chosen)
    plan = default_plan("cpu", quick=True)
    ok = compare(profile, plan, [0.55, 0.45, 0.6], [110.0, 90.0, 300.0])  # one disturbed round: the median holds
    assert ok.ok and ok.delivered_rtf == 0.55 and ok.delivered_ttfa_ms == 110.0 and ok.rtf_error == pytest.approx(0.1)
    slow = compare(profile, plan, [0.7, 0.7, 0.7], [100.0] * 3)
    assert not slow.ok and "RTF predicted 0.500, delivered 0.700 (+40%)" in slow.reason and "TTFA" not in slow.reason
    fast = compare(profile, plan, [0.5] * 3, [60.0] * 3)  # better than predicted is a wrong prediction too
    assert not fast.ok and "TTFA predicted 100 ms, delivered 60 ms (-40%)" in fast.reason


def test_no_measured_row_is_an_error_listing_the_reasons():
    with pytest.raises(AutotuneError, match="out of memory"):
        choose([row("off", 1, None, status="oom").model_copy(update={"reason": "out of memory"})], RULE, (1,))


@pytest.mark.parametrize(
    "setting,device,reason",
    [
        (("float32", "off", True), "cpu", "CUDA graphs need a CUDA device; this is cpu"),
        (("bfloat16", "reduce-overhead", True), "cuda", "captures CUDA graphs itself"),
        (("float16", "off", False), "cpu", "float16 is a GPU dtype"),
        (("bfloat16", "default", True), "cuda", None),
        (("float32", "default", False), "cpu", None),
    ],
)
def test_skip_reasons(setting, device, reason):
    got = setting_skip_reason(*setting, device)
    assert (got is None) if reason is None else (reason in got)


def test_plans_cover_the_spec():
    full = default_plan("cuda")
    assert full.batches == (1, 2, 4, 8, 16, 32, 64, 128) and set(full.cuda_graphs) == {False, True}
    assert {"off", "default", "reduce-overhead", "max-autotune-no-cudagraphs"} == set(full.compile_modes)
    quick = default_plan("cpu", quick=True)
    assert quick.compile_modes == ("off", "default") and quick.batches == (1, 2, 4) and True in quick.cuda_graphs
    assert quick.rounds >= 3 and quick.timed_frames >= 12 and quick.check and quick.check_tolerance == 0.25
    gpu = default_plan("cuda")
    assert gpu.quantize == ("off", "int8") and max(gpu.batches) >= 64 and default_plan("cpu").quantize == ("off",)


def test_bad_options_are_one_line_errors(capsys):
    assert autotune_main(["--model", "tiny-random", "--device", "cpu", "--batches", "0,2"]) == 2
    assert capsys.readouterr().err.strip() == "Error: expected positive integers, got '0,2'"


# --- a real sweep on this CPU -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """`csm-runtime autotune --quick` for tiny-random on CPU, as a process (compile off, batches 1 and 2)."""
    out = tmp_path_factory.mktemp("profiles")
    cmd = [str(ROOT / ".venv" / "bin" / "csm-runtime"), "autotune", "--model", "tiny-random", "--quick", "--device", "cpu",
           "--cpu-threads", "1", "--compile", "off", "--batches", "1,2", "--stop-rtf", "1000", "--warmup-frames", "1",
           "--timed-frames", "3", "--rounds", "2", "--check-rounds", "2", "--check-frames", "6",
           "--check-tolerance", "1000", "--out", str(out), "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads(proc.stdout), proc.stderr


def test_sweep_writes_a_valid_profile_and_plot(swept):
    out, summary, stderr = swept
    slug = detect_device("cpu").slug
    assert summary["profile"] == str(out / f"{slug}.yaml")
    profile = load_profile(summary["profile"])
    assert profile.slug == slug and profile.identity.model.id == "tiny-random" and profile.sweep.quick
    assert profile.identity.versions.torch and profile.identity.device.kind == "cpu"
    png = out / f"{slug}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # progress over a pipe is one line per candidate
    assert "[1/4] float32/off/no-graphs/b1: RTF" in stderr and "[4/4]" in stderr


def test_sweep_records_gpu_candidates_as_skipped_on_cpu(swept):
    profile = load_profile(swept[1]["profile"])
    graphs = [c for c in profile.candidates if c.cuda_graphs]
    assert len(graphs) == 2 and all(c.status == "skipped" and "need a CUDA device" in c.reason for c in graphs)
    measured = [c for c in profile.candidates if c.status == "measured"]
    assert [c.batch for c in measured] == [1, 2]
    for c in measured:
        m = c.measurement
        # 2 rounds of 3 frames, and as many more as a disturbed machine made it take (rounds that disagree)
        assert m.rounds == 2 + m.extra_rounds and len(m.round_ms_per_frame) == m.rounds and m.spread >= 0
        assert m.frames_timed == 3 * m.rounds and m.rtf > 0 and set(m.ttfa_ms) == {1, 2}
        assert m.ttfa_ms[2] > m.ttfa_ms[1] and m.ms_per_frame_p95 >= m.ms_per_frame_p50 and not m.cuda_graphs_active
        assert m.rtf == pytest.approx(statistics.median(m.round_ms_per_frame) / 80, rel=5e-3)  # the rounds' median
        # a request joining a busy batch waits half a step on average; an idle server admits it at once
        assert m.admission_wait_ms == (pytest.approx(m.rtf * 40, rel=5e-3) if c.batch > 1 else 0)


def test_sweep_serves_the_choice_over_http_and_records_what_it_delivered(swept):
    out, summary, stderr = swept
    p = load_profile(summary["profile"])
    d = p.delivery
    assert d is not None and d.ok and summary["delivery"]["ok"] and "delivery check: delivered RTF" in stderr
    f = p.chosen.figures  # what the server delivered is the profile's figure; the sweep's is beside it
    assert f.source == "delivered" and f.rtf == d.delivered_rtf and f.predicted.rtf == p.chosen.measurement.rtf
    assert summary["figures"] == f.model_dump(mode="json")
    assert d.streams == p.chosen.settings.max_streams and d.rounds == 2 * d.attempts  # 2 a try, more if noisy
    assert len(d.round_rtf) == len(d.round_ttfa_ms) == d.rounds
    assert d.predicted_rtf == p.chosen.measurement.rtf and d.delivered_rtf > 0 and d.delivered_ttfa_ms > 0
    assert d.predicted_ttfa_ms == p.chosen.measurement.ttfa_ms[p.chosen.settings.first_chunk_frames]
    assert d.rtf_error == pytest.approx(d.delivered_rtf / d.predicted_rtf - 1, abs=1e-3)
    assert p.sweep.rounds == 2 and p.sweep.load_avg and not list(out.glob(".*checking*"))


def test_a_delivery_that_differs_from_the_prediction_is_measured_again_and_recorded_not_refused(tmp_path):
    """A tolerance no timing can meet: every attempt differs from the prediction. The profile is still written, and
    its figures are what the server delivered (the sweep's beside them); only a setting that does not serve fails."""
    out = tmp_path / "profiles"
    cmd = [str(ROOT / ".venv" / "bin" / "csm-runtime"), "autotune", "--model", "tiny-random", "--quick", "--device",
           "cpu", "--cpu-threads", "1", "--compile", "off", "--batches", "1", "--warmup-frames", "1", "--timed-frames",
           "2", "--rounds", "1", "--check-rounds", "1", "--check-frames", "4", "--check-tolerance", "1e-9",
           "--check-attempts", "2", "--no-plot", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    slug = detect_device("cpu").slug
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "measuring again" in proc.stderr and "the profile states what the server delivered" in proc.stderr
    assert not (out / f"{slug}.rejected.yaml").exists()
    p = load_profile(out / f"{slug}.yaml")
    d, f = p.delivery, p.chosen.figures
    assert d is not None and not d.ok and "delivers other figures than the sweep predicted" in d.reason
    assert d.attempts == 2 and len(d.earlier) == 1 and d.rounds == 2  # measured again, medians over both attempts
    assert d.unsettled.endswith("after 2 attempt(s)")
    assert f.source == "delivered" and (f.rtf, f.ttfa_ms) == (d.delivered_rtf, d.delivered_ttfa_ms)
    assert (f.predicted.rtf, f.predicted.ttfa_ms) == (d.predicted_rtf, d.predicted_ttfa_ms)
    assert f.streams == p.chosen.settings.max_streams and "figures (delivered over HTTP" in proc.stdout


def test_chosen_is_the_rules_best_among_the_measured(swept):
    """Re-derive the choice here, independently of choice.choose, from the rule the profile states."""
    p = load_profile(swept[1]["profile"])
    rule, fc = p.rule, min(p.sweep.first_chunk_frames)
    measured = [c for c in p.candidates if c.status == "measured"]
    single = {c.setting: c.measurement.ms_per_frame_mean for c in measured if c.batch == 1}
    ok = [c for c in measured if c.measurement.rtf <= rule.rtf_max and c.measurement.ttfa_ms[fc] <= rule.ttfa_target_ms]
    if ok:
        top = max(c.batch for c in ok)
        best = min((c for c in ok if c.batch == top), key=lambda c: single[c.setting])
        assert p.chosen.realtime and p.chosen.settings.max_streams == top
    else:
        best = min((c for c in measured if c.batch == 1), key=lambda c: c.measurement.ms_per_frame_mean)
        assert not p.chosen.realtime and p.chosen.settings.max_streams == 1
    assert p.chosen.candidate == best.id
    assert p.chosen.measurement == best.measurement
    assert p.chosen.why


def test_runtime_loads_and_applies_the_swept_profile(swept):
    from csm_runtime.engine.loader import load_generator
    from csm_runtime.settings import RuntimeSettings

    out, summary, _ = swept
    profile = load_profile(summary["profile"])
    base = RuntimeSettings(model="tiny-random", device="cpu", profiles_dir=str(out), max_streams=7, max_seq_len=256)
    settings, note = apply_profile(base, "auto")
    assert note.status == "applied" and note.path == summary["profile"]
    chosen = profile.chosen.settings
    assert (settings.max_streams, settings.compile, settings.dtype, settings.cuda_graphs) == (
        chosen.max_streams, chosen.compile, chosen.dtype, chosen.cuda_graphs)  # fmt: skip
    gen = load_generator(settings=settings)
    assert gen.max_streams == chosen.max_streams and gen.compile_mode == chosen.compile
    assert str(gen.dtype) == f"torch.{chosen.dtype}"


# --- `deploy autotune`: the sweep on a box, the files copied back, the ledger -------------------------------------


def test_deploy_autotune_on_a_local_rental(tmp_path, deploy_home):
    from deploy.ledger import Ledger

    env = {**os.environ, "DEPLOY_HOME": str(deploy_home)}
    deploy = [str(ROOT / ".venv" / "bin" / "deploy")]
    # a `local` rental as the provision flow records one (this machine is the box; its work dir under DEPLOY_HOME)
    deploy_home.mkdir(parents=True, exist_ok=True)
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        row = ledger.record_intent(attempt_id="t1", provider="local", label_prefix="csm-deploy")
        ledger.record_rented(row.id, "local-test")
    rid = str(row.id)
    out = tmp_path / "profiles"
    sweep = (
        "--device cpu --cpu-threads 1 --compile off --batches 1 --warmup-frames 1 --timed-frames 2 --rounds 1 "
        "--check-rounds 1 --check-frames 4 --check-tolerance 1000"
    )
    res = subprocess.run(
        [*deploy, "autotune", rid, "--quick", "--model", "tiny-random", "--runtime", str(ROOT / ".venv" / "bin" / "csm-runtime"),
         "--sweep-args", sweep, "--out", str(out), "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "float32/off/no-graphs/b1: RTF" in res.stderr  # the box's progress, streamed
    result = json.loads(res.stdout)
    slug = detect_device("cpu").slug
    assert result["profile"] == str(out / f"{slug}.yaml") and result["plot"] == str(out / f"{slug}.png")
    profile = load_profile(result["profile"])
    assert profile.slug == slug and (out / f"{slug}.png").stat().st_size > 10_000
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        rental = ledger.get(int(rid))
        kinds = [e["kind"] for e in ledger.events(int(rid))]
    assert "autotune" in kinds and "autotuned" in kinds
    assert rental.meta["profile"]["slug"] == slug and rental.meta["profile"]["settings"]["max_streams"] >= 1


def test_deploy_autotune_unknown_rental_is_one_line(deploy_home):
    res = subprocess.run([str(ROOT / ".venv" / "bin" / "deploy"), "autotune", "999"], capture_output=True, text=True,
                         env={**os.environ, "DEPLOY_HOME": str(deploy_home)}, timeout=60)  # fmt: skip
    assert (
        res.returncode == 1 and res.stderr.strip() == "Error: no rental 999 in the ledger; `deploy status` lists them"
    )


def test_fetch_file_over_ssh_is_binary_safe_and_checksummed(sshd, tmp_path):
    from deploy.remote.host import RemoteHost
    from tests.fakes.sshd import keygen

    key = tmp_path / "id"
    with open(sshd.authorized_keys, "a") as f:
        f.write(keygen(key) + "\n")
    remote = tmp_path / "box" / "plot.png"
    remote.parent.mkdir()
    remote.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 500)
    host = RemoteHost(sshd.host, sshd.port, sshd.user, key)
    try:
        digest = host.get(str(remote), tmp_path / "here" / "plot.png")
    finally:
        host.close()
    assert (tmp_path / "here" / "plot.png").read_bytes() == remote.read_bytes()
    assert digest == hashlib.sha256(remote.read_bytes()).hexdigest()
