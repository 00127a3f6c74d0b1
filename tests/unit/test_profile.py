"""The profile format: validation errors are one clear line, and the runtime applies a profile only when it matches.

No model is built here: profiles are written from data (the schema is the thing under test), and the device is the
real one this test runs on (its slug comes from identity.detect_device, as in `serve --profile auto`).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import yaml

from csm_runtime.commands.serve import resolve_profile
from csm_runtime.settings import RuntimeSettings
from csm_runtime.tuning.apply import apply_profile, profile_overrides
from csm_runtime.tuning.identity import detect_device
from csm_runtime.tuning.profile import (
    SCHEMA_VERSION,
    ProfileError,
    dump_profile,
    find_profile,
    load_profile,
    parse_profile,
)

ROOT = Path(__file__).resolve().parents[2]
SLUG = detect_device("cpu").slug


def measurement(rtf: float, ttfa: float = 100.0) -> dict:
    return {
        "frames_timed": 8, "ms_per_frame_p50": rtf * 80, "ms_per_frame_p95": rtf * 85, "ms_per_frame_mean": rtf * 80,
        "rtf": rtf, "ttfa_ms": {1: ttfa, 2: ttfa * 2}, "prefill_ms": 5.0, "peak_memory_mb": 900.0,
        "memory_kind": "process_rss", "compile_s": 0.0, "warmup_s": 1.0, "cuda_graphs_active": False,
    }  # fmt: skip


def profile_data(slug: str = SLUG, model: str = "tiny-random") -> dict:
    """A valid schema-1 profile as plain data: two measured rows, one skipped."""
    chosen_m = measurement(0.5)
    return {
        "schema_version": 1,
        "slug": slug,
        "identity": {
            "device": {"kind": "cpu", "slug": slug, "name": "Test CPU", "cpu_model": "Test CPU", "cpu_cores": 2},
            "versions": {"python": "3.11", "torch": "2.6.0", "transformers": "4.57.6", "moshi": "0.2.13"},
            "model": {"id": model, "revision": None},
            "created": "2026-11-25T12:00:00Z",
        },
        "rule": {"rtf_max": 0.8, "ttfa_target_ms": 500, "text": "most streams"},
        "chosen": {
            "candidate": "float32/default/no-graphs/b2",
            "settings": {
                "dtype": "float32",
                "compile": "default",
                "cuda_graphs": False,
                "max_streams": 2,
                "first_chunk_frames": 2,
            },  # fmt: skip
            "realtime": True,
            "why": "test",
            "measurement": chosen_m,
        },
        "sweep": {
            "quick": True,
            "dtypes": ["float32"],
            "compile_modes": ["default"],
            "cuda_graphs": [False, True],
            "batches": [1, 2],
            "first_chunk_frames": [1, 2],
            "warmup_frames": 1,
            "timed_frames": 8,
            "stop_rtf": 1.0,
            "prompt": "hi",
            "duration_s": 3.0,
        },  # fmt: skip
        "candidates": [
            {
                "id": "float32/default/no-graphs/b1",
                "dtype": "float32",
                "compile": "default",
                "cuda_graphs": False,
                "batch": 1,
                "status": "measured",
                "measurement": measurement(0.3),
            },
            {
                "id": "float32/default/no-graphs/b2",
                "dtype": "float32",
                "compile": "default",
                "cuda_graphs": False,
                "batch": 2,
                "status": "measured",
                "measurement": chosen_m,
            },
            {
                "id": "float32/default/graphs/b1",
                "dtype": "float32",
                "compile": "default",
                "cuda_graphs": True,
                "batch": 1,
                "status": "skipped",
                "reason": "CUDA graphs need a CUDA device; this is cpu",
            },
        ],  # fmt: skip
    }


def write(tmp_path: Path, data, name: str | None = None) -> Path:
    path = tmp_path / (name or f"{SLUG}.yaml")
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


# --- validation ------------------------------------------------------------------------------------------------


def test_round_trip_keeps_every_field(tmp_path):
    original = parse_profile(profile_data())
    path = dump_profile(original, tmp_path / "p.yaml")
    again = load_profile(path)
    assert again == original
    assert again.candidate("float32/default/graphs/b1").reason.startswith("CUDA graphs need")
    assert again.chosen.measurement.ttfa_ms == {1: 100.0, 2: 200.0}  # int keys survive YAML


def test_unknown_schema_version_is_a_clear_error(tmp_path):
    data = profile_data()
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ProfileError, match=r"schema_version 2 is not supported \(this runtime reads 1\)"):
        load_profile(write(tmp_path, data))


def test_missing_schema_version_says_not_a_profile(tmp_path):
    with pytest.raises(ProfileError, match="no schema_version: not a csm-runtime profile"):
        load_profile(write(tmp_path, {"max_streams": 4}))


@pytest.mark.parametrize(
    "text,match",
    [
        ("schema_version: 1\nslug: [unclosed\n", r"not valid YAML at line \d+"),
        ("- just\n- a list\n", r"expected a mapping, got list"),
    ],
)
def test_malformed_yaml_is_one_line(tmp_path, text, match):
    with pytest.raises(ProfileError, match=match) as info:
        load_profile(write(tmp_path, text))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda d: d["chosen"]["settings"].update(max_streams=0), r"chosen\.settings\.max_streams: .*greater than"),
        (lambda d: d["chosen"]["settings"].update(compile="turbo"), r"chosen\.settings\.compile: Input should be"),
        (lambda d: d.update(surprise=1), r"surprise: Extra inputs are not permitted"),
        (lambda d: d["identity"].pop("model"), r"identity\.model: Field required"),
        (lambda d: d["candidates"][2].pop("reason"), r"status skipped needs a reason"),
        (lambda d: d["chosen"].update(candidate="float32/default/graphs/b1"), r"is not a measured row"),
        (lambda d: d.update(slug="rtx-4090"), r"differs from identity\.device\.slug"),
    ],
)
def test_invalid_profile_names_the_field(tmp_path, edit, match):
    data = copy.deepcopy(profile_data())
    edit(data)
    with pytest.raises(ProfileError, match=match) as info:
        load_profile(write(tmp_path, data))
    assert str(info.value).startswith(f"profile {tmp_path}")


def test_missing_file_is_a_profile_error(tmp_path):
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "nope.yaml")


def test_committed_profiles_validate():
    paths = sorted((ROOT / "profiles").glob("*.yaml"))
    for path in paths:
        profile = load_profile(path)
        assert path.stem == profile.slug
        if profile.plot:
            assert (path.parent / profile.plot).is_file(), f"{path} names a plot that is not committed"


# --- applying ---------------------------------------------------------------------------------------------------


def test_auto_applies_the_matching_profile(tmp_path):
    write(tmp_path, profile_data())
    assert find_profile(tmp_path, SLUG) == tmp_path / f"{SLUG}.yaml"
    base = RuntimeSettings(model="tiny-random", device="cpu", profiles_dir=str(tmp_path))
    settings, note = apply_profile(base, "auto")
    assert (settings.max_streams, settings.compile, settings.first_chunk_frames) == (2, "default", 2)
    assert note.status == "applied" and note.slug == SLUG and "max_streams 2" in note.message
    assert settings.model == "tiny-random" and settings.queue_size == base.queue_size  # only the chosen fields


def test_auto_without_a_profile_keeps_defaults_and_warns_what_is_missing(tmp_path, caplog):
    base = RuntimeSettings(model="tiny-random", device="cpu", profiles_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="csm_runtime.profile"):
        settings, note = apply_profile(base, "auto")
    assert settings == base and note.status == "defaults"
    assert f"{tmp_path / SLUG}.yaml is missing" in note.message and "safe defaults" in note.message
    assert "csm-runtime autotune --model tiny-random" in note.message
    assert any(r.levelno == logging.WARNING and SLUG in r.getMessage() for r in caplog.records)


def test_auto_refuses_a_profile_of_another_model_shape(tmp_path):
    write(tmp_path, profile_data(model="tiny-random"))
    base = RuntimeSettings(model="csm-1b-random", device="cpu", profiles_dir=str(tmp_path))
    settings, note = apply_profile(base, "auto")
    assert settings == base and note.status == "defaults"
    assert "measured with tiny-random (tiny shape), serving csm-1b-random (csm-1b shape)" in note.message


def test_auto_with_a_broken_matching_profile_is_an_error(tmp_path):
    data = profile_data()
    data["schema_version"] = 7
    write(tmp_path, data)
    with pytest.raises(ProfileError, match="schema_version 7"):
        apply_profile(RuntimeSettings(model="tiny-random", device="cpu", profiles_dir=str(tmp_path)), "auto")


def test_explicit_path_applies_even_for_another_device_and_says_so(tmp_path):
    path = write(tmp_path, profile_data(slug="rtx-4090"), name="rtx-4090.yaml")
    base = RuntimeSettings(model="tiny-random", device="cpu")
    settings, note = apply_profile(base, str(path))
    assert settings.max_streams == 2 and note.status == "applied"
    assert f"measured on rtx-4090, this device is {SLUG}" in note.message


def test_off_changes_nothing(tmp_path):
    write(tmp_path, profile_data())
    base = RuntimeSettings(model="tiny-random", device="cpu", profiles_dir=str(tmp_path), profile="off")
    settings, note = apply_profile(base)
    assert settings == base and note.status == "off"


def test_serve_call_site_applies_the_profile_and_explicit_options_win(tmp_path):
    write(tmp_path, profile_data())
    base = RuntimeSettings(model="tiny-random", device="cpu", profiles_dir=str(tmp_path), profile="auto")
    overrides, note = profile_overrides(base)
    assert overrides["max_streams"] == 2 and note["status"] == "applied"
    settings, reported = resolve_profile(base, {})
    assert settings.max_streams == 2 and settings.compile == "default" and reported["slug"] == SLUG
    settings, _ = resolve_profile(base, {"max_streams": 1})
    assert settings.max_streams == 1 and settings.compile == "default"


# --- the profile's figures: what the server delivered, the sweep's beside them --------------------------------------


def delivery_data(rtf: float, ttfa: float) -> dict:
    return {
        "ok": False, "tolerance": 0.25, "streams": 2, "rounds": 5, "frames_per_request": 24, "first_chunk_frames": 2,
        "predicted_rtf": 0.5, "delivered_rtf": rtf, "rtf_error": rtf / 0.5 - 1, "predicted_ttfa_ms": 200.0,
        "delivered_ttfa_ms": ttfa, "ttfa_error": ttfa / 200 - 1,
    }  # fmt: skip


def test_figures_are_the_delivered_ones_with_the_sweeps_beside_them(tmp_path):
    from csm_runtime.tuning.build import with_figures
    from csm_runtime.tuning.profile import Delivery

    profile = parse_profile(profile_data())
    swept = with_figures(profile).chosen.figures  # no delivery check: the sweep's figures, said so
    assert (swept.source, swept.rtf, swept.ttfa_ms, swept.streams) == ("sweep", 0.5, 200.0, 2) and swept.within_rule
    delivered = with_figures(profile, Delivery(**delivery_data(0.9, 480.0)))
    f = delivered.chosen.figures
    assert (f.source, f.rtf, f.ttfa_ms) == ("delivered", 0.9, 480.0)
    assert (f.predicted.rtf, f.predicted.ttfa_ms) == (0.5, 200.0)
    assert not f.within_rule  # RTF 0.9 > rule's 0.8: the profile says what the server does, not what the rule wanted
    again = load_profile(dump_profile(delivered, tmp_path / "p.yaml"))
    assert again == delivered and again.delivery.delivered_rtf == 0.9
    # a file without figures (written before they were recorded) still loads
    assert parse_profile(profile_data()).chosen.figures is None


def test_deploy_reads_the_delivered_rtf_and_falls_back_to_the_sweeps():
    from csm_runtime.tuning.build import with_figures
    from csm_runtime.tuning.profile import Delivery
    from deploy.provision.autotune import profile_summary

    old = yaml.safe_dump(profile_data())
    assert profile_summary(old, "pushed", "p.yaml")["rtf"] == 0.5
    assert profile_summary(old, "pushed", "p.yaml")["rtf_from"] == "sweep"
    profile = with_figures(parse_profile(profile_data()), Delivery(**delivery_data(0.9, 480.0)))
    new = yaml.safe_dump(profile.model_dump(mode="json"))
    summary = profile_summary(new, "autotuned", "p.yaml")
    assert summary["rtf"] == 0.9 and summary["rtf_from"] == "delivered" and summary["max_streams"] == 2
