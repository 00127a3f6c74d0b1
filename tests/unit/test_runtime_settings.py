"""Runtime settings: defaults <- YAML <- CSM_* environment <- options, each value parsed to its field's type, and
any CSM_* variable that names no setting refused on one line (the commands exit 2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from csm_runtime import cli
from csm_runtime.settings import RuntimeSettings, SettingsError, from_env, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("yes", True), ("On", True), ("0", False), ("false", False)])
def test_booleans_parse(raw, value):
    assert from_env(RuntimeSettings(), {"CSM_CUDA_GRAPHS": raw}).cuda_graphs is value


def test_values_parse_to_the_field_type_and_none_clears_an_optional():
    env = {"CSM_MAX_STREAMS": "8", "CSM_TEMPERATURE": "0.7", "CSM_TOKEN_FILE": "none", "CSM_MODEL": "tiny-random"}
    s = from_env(RuntimeSettings(token_file="/t"), env)
    assert (s.max_streams, s.temperature, s.token_file, s.model) == (8, 0.7, None, "tiny-random")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CSM_FOO": "1"}, "unknown setting CSM_FOO"),
        ({"CSM_MAX_STREAM": "2"}, "unknown setting CSM_MAX_STREAM (did you mean CSM_MAX_STREAMS?)"),
        ({"CSM_MAX_STREAMS": "many"}, "CSM_MAX_STREAMS='many' is not an integer"),
        ({"CSM_CUDA_GRAPHS": "maybe"}, "CSM_CUDA_GRAPHS='maybe' is not true or false"),
        ({"CSM_PORT": ""}, "CSM_PORT='' is not an integer"),
    ],
)
def test_bad_environment_is_one_clear_error(env, message):
    with pytest.raises(SettingsError) as err:
        from_env(RuntimeSettings(), env)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_precedence_yaml_then_env_then_options(tmp_path, monkeypatch):
    config = tmp_path / "settings.yaml"
    config.write_text("max_streams: 3\nqueue_size: 5\nport: 9000\n")
    monkeypatch.setenv("CSM_QUEUE_SIZE", "6")
    monkeypatch.setenv("CSM_PORT", "9001")
    s = load_settings(config, port=9002, model=None)
    assert (s.max_streams, s.queue_size, s.port, s.model) == (3, 6, 9002, "sesame/csm-1b")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_stream: 2\n", "unknown setting(s) max_stream"),
        ("port: null\n", "port: a value is required"),
        ("port: 80.5\n", "port=80.5 is not an integer"),
        ("- 1\n", "expected a mapping"),
        ("port: [\n", "not valid YAML"),
    ],
)
def test_bad_yaml_is_one_clear_error(tmp_path, text, message):
    config = tmp_path / "settings.yaml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(config)


@pytest.mark.parametrize("command", [["serve"], ["generate", "--text", "hi"], ["autotune"]])
def test_commands_refuse_an_unknown_setting_with_exit_2(command, monkeypatch, capsys):
    monkeypatch.setenv("CSM_FOO", "1")
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: unknown setting CSM_FOO") and err.count("\n") == 1


def test_every_csm_variable_the_image_sets_is_a_setting():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    env = dict(re.findall(r"\b(CSM_[A-Z_]+)=(\S+)", dockerfile))
    assert set(env) >= {"CSM_HOST", "CSM_PORT", "CSM_TOKEN_FILE", "CSM_PROFILES_DIR"}
    s = from_env(RuntimeSettings(), {k: v.rstrip("\\") for k, v in env.items()})
    assert (s.host, s.port, s.profiles_dir) == ("0.0.0.0", 8000, "/app/profiles")
