"""Schemathesis against the real server (uvicorn, tiny-random on CPU), with every check it has: what /openapi.json
promises (statuses, content types, headers, bodies, the bearer scheme, enums, bounds) is what the server does.

Bounded: a fixed seed, a few dozen examples per operation, one worker; the server's audio cap is two frames, so the
many synthesis requests the model and voice enums let through stay short."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from csm_runtime.server import create_app
from csm_runtime.settings import RuntimeSettings
from tests.fakes.server_fixtures import ServerThread, wait_ready

TOKEN = "schemathesis-token-0123456789"
ST = Path(sys.executable).with_name("st")


def test_schemathesis_finds_no_difference_between_schema_and_server(tmp_path):
    (tmp_path / "token").write_text(TOKEN)
    settings = RuntimeSettings(
        model="tiny-random",
        device="cpu",
        dtype="float32",
        cpu_threads=1,
        max_streams=4,
        queue_size=64,  # schemathesis sends one request at a time: never a 429 it could not expect
        max_audio_ms=160,
        token_file=str(tmp_path / "token"),
    )
    with ServerThread(create_app(settings)) as srv:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
            wait_ready(client)
        args = ["run", f"{srv.url}/openapi.json", "--header", f"Authorization: Bearer {TOKEN}", "--checks", "all"]
        args += ["--max-examples", "20", "--seed", "20261128", "--workers", "1", "--request-timeout", "60"]
        result = subprocess.run(
            [str(ST), *args, "--no-color"], cwd=tmp_path, capture_output=True, text=True, timeout=400
        )
    tail = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert "No issues found" in result.stdout and "Selected: 7/7" in result.stdout, tail
