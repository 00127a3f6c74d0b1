"""`csm-runtime generate` and `csm-runtime info`, called in-process through cli.main (no GPU needed)."""

from __future__ import annotations

import json

import soundfile

from csm_runtime import cli


def test_generate_writes_a_24khz_wav_and_prints_metrics(tmp_path, capsys):
    out = tmp_path / "out.wav"
    argv = ["generate", "--model", "tiny-random", "--text", "Hi there.", "--max-ms", "480", "--greedy"]
    rc = cli.main([*argv, "--device", "cpu", "-o", str(out), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    pcm, sr = soundfile.read(out)
    assert sr == 24_000 and pcm.ndim == 1 and len(pcm) == 6 * 1920
    assert report["frames"] == 6 and report["ms_per_frame"] > 0 and report["rtf"] > 0 and report["ttfa_ms"] > 0


def test_generate_bad_input_is_one_line_and_nonzero(capsys):
    assert cli.main(["generate", "--text", "  "]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and "\n" not in err
    assert cli.main(["generate", "--text", "x", "--temperature", "0"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_generate_show_config_prints_settings(capsys):
    assert cli.main(["generate", "--show-config", "--compile", "default"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["model"] == "tiny-random" and cfg["compile"] == "default" and "max_streams" in cfg


def test_info_works_without_a_gpu(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"].startswith("2.") and info["ram"]["total_gib"] > 0 and info["cpu"]["cores_logical"] >= 1
    if not info["cuda_available"]:
        assert info["gpus"] == [] and info["gpu_note"]
    assert cli.main(["info"]) == 0
    assert "torch" in capsys.readouterr().out
