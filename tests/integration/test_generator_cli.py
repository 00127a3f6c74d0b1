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


def test_generate_says_a_long_file_sentence_by_sentence(tmp_path, capsys, monkeypatch):
    """Three sentences, each capped at two frames (random weights never end one): the file holds every piece."""
    from csm_runtime.engine import longtext
    from csm_runtime.engine.longtext import piece_cap_frames

    monkeypatch.setattr(longtext, "PIECE_BASE_MS", 160)
    monkeypatch.setattr(longtext, "PIECE_MS_PER_CHAR", 0)
    sentences = ["First one.", "Then, Mr. Smith said no.", "Done!"]
    text = tmp_path / "long.txt"
    text.write_text(" ".join(sentences) + "\n")
    out = tmp_path / "long.wav"
    argv = ["generate", "--model", "tiny-random", "--file", str(text), "--device", "cpu", "--max-ms", "600000"]
    assert cli.main([*argv, "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    frames = sum(piece_cap_frames(s) for s in sentences)
    assert report["pieces"] == 3 and report["frames"] == frames == 6 and report["ttfa_ms"] > 0
    assert len(soundfile.read(out)[0]) == frames * 1920
    assert cli.main(["generate", "--file", str(text), "--text", "x"]) == 2
    assert "not both" in capsys.readouterr().err


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
