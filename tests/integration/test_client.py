"""`deploy generate` against a real server (uvicorn + the real tiny-random generator): streams to a file, prints
TTFA and RTF, reports the server's own error message; and the client side never imports torch."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import soundfile as sf
import typer
from typer.testing import CliRunner

from csm_runtime.server import create_app
from csm_runtime.settings import RuntimeSettings
from deploy.client import GenerateError, fix_wav_header, play, synthesize
from deploy.commands.generate import generate
from deploy.errors import NotFoundError, UsageError
from tests.fakes.server_fixtures import ServerThread, wait_ready

TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tok = tmp_path_factory.mktemp("client") / "token"
    tok.write_text(TOKEN)
    settings = RuntimeSettings(model="tiny-random", device="cpu", cpu_threads=1, max_streams=2, max_audio_ms=2000,
                               token_file=str(tok))  # fmt: skip
    with ServerThread(create_app(settings)) as srv:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            wait_ready(c)
        srv.token_file = tok
        yield srv


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(generate)
    return app


def test_deploy_generate_streams_a_wav_and_prints_ttfa_and_rtf(server, tmp_path):
    out = tmp_path / "hi.wav"
    args = ["--endpoint", server.url, "--token-file", str(server.token_file), "--voice", "echo", "--max-audio-ms",
            "320", "Hello there.", "-o", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    assert "TTFA" in result.stdout and "RTF" in result.stdout and "0.32 s audio" in result.stdout
    assert sf.info(str(out)).frames == 4 * 1920  # header patched to the real length after streaming


def test_synthesize_compressed_format_measures_length_and_json_fields(server, tmp_path):
    res = synthesize(server.url, "Hi.", tmp_path / "a.flac", token=TOKEN, fmt="flac", max_audio_ms=160)
    assert res.audio_s == pytest.approx(0.16) and res.bytes > 0 and res.ttfa_s <= res.wall_s
    assert set(res.as_dict()) >= {"ttfa_s", "rtf", "audio_s", "wall_s"}
    assert sf.read(str(tmp_path / "a.flac"))[0].shape == (2 * 1920,)  # STREAMINFO patched: plain sf.read works


def test_server_errors_come_back_as_one_line_with_the_servers_message(server, tmp_path):
    with pytest.raises(GenerateError, match="400: unknown voice 'nobody'"):
        synthesize(server.url, "Hi.", tmp_path / "x.wav", token=TOKEN, voice="nobody")
    with pytest.raises(GenerateError, match="401: invalid bearer token"):
        synthesize(server.url, "Hi.", tmp_path / "x.wav", token="wrong")
    with pytest.raises(UsageError, match="unknown format"):
        synthesize(server.url, "Hi.", tmp_path / "x.aac", fmt="aac")
    with pytest.raises(GenerateError, match="failed: ConnectError"):
        synthesize("http://127.0.0.1:9", "Hi.", tmp_path / "x.wav")


def test_command_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="--endpoint"):
        generate(["Hello."], out=tmp_path / "x.wav", endpoint=None)
    with pytest.raises(UsageError, match="not both"):
        generate(["3", "Hello."], out=tmp_path / "x.wav", endpoint="http://x")


def test_play_without_any_player_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GenerateError, match="no audio player found"):
        play(tmp_path / "x.wav")


def test_instance_id_resolves_through_the_ledger(tmp_path, monkeypatch):
    from deploy.ledger import Ledger
    from deploy.remote.endpoint import open_rental_endpoint
    from deploy.settings import load_settings

    monkeypatch.setenv("DEPLOY_HOME", str(tmp_path))
    settings = load_settings()
    with Ledger(settings.ledger_path) as ledger:
        ledger.migrate()
        rid = ledger.record_intent(attempt_id="a1", provider="local", label_prefix="csm").id
        ledger.update_meta(rid, endpoint="http://127.0.0.1:8123", token_file="/tmp/tok")
        bare = ledger.record_intent(attempt_id="a2", provider="local", label_prefix="csm").id
    with open_rental_endpoint(str(rid), settings) as resolved:
        assert resolved == ("http://127.0.0.1:8123", "/tmp/tok", None)  # plain http: no pinned certificate
    with pytest.raises(UsageError, match="no recorded endpoint"), open_rental_endpoint(str(bare), settings):
        pass
    with pytest.raises(NotFoundError, match="no rental 999"), open_rental_endpoint("999", settings):
        pass
    with pytest.raises(UsageError, match="must be a number"), open_rental_endpoint("abc", settings):
        pass


def test_fix_wav_header_leaves_other_files_alone(tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav file at all, but long enough to have a header......")
    fix_wav_header(junk)
    assert junk.read_bytes().startswith(b"not a wav")


def test_client_side_never_imports_torch():
    code = "import sys, deploy.client, deploy.commands.generate; print('torch' in sys.modules, 'numpy' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["False", "False"], r.stderr
