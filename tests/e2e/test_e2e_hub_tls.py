"""End to end with a gated checkpoint and a public port: `deploy provision --model acme/csm-gated` on the network-
namespace box (tests/fakes/netns_box.py, a real sshd, the vast emulator), the checkpoint downloaded from the Hub
stand-in (tests/fakes/hub/) through the box's own network.

With the operator's token (HF_TOKEN here) the token reaches the box as a 0600 file, the box downloads the checkpoint
(provision shows the progress), the server binds the mapped port with TLS, its certificate is pinned, and
`deploy generate` and the fleet gateway speak to it only with that certificate; the token is in no log, no argv, no
ledger. Without a token the provision ends at `ready` with the one line that says what to do, and the box is gone.

The box reaches the stand-in at the same https://127.0.0.1:PORT (and https://localhost:PORT for its CDN) as the tests
on this machine do, through two relays (tests/fakes/tcp_relay.py). Runs as root; elsewhere it is skipped.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from deploy.ledger import Ledger
from tests.conftest import ROOT, run_deploy, unknown_running
from tests.fakes.hub import FakeHub, build_csm_checkpoint, make_tls_files
from tests.fakes.ledger_view import ledger_rows as rows
from tests.fakes.netns_box import NetnsBox, box_for_module, box_prefix, files_containing, kill_box_processes
from tests.fakes.server_fixtures import free_port
from tests.fakes.tcp_relay import Relay
from tests.fakes.vast import VastEmulator

pytestmark = pytest.mark.slow
GATED = "acme/csm-gated"
TOKEN = f"hf_{secrets.token_hex(17)}"
THROTTLE_BPS = 12_000_000  # the ~58 MB checkpoint takes a few seconds: long enough to watch it come
SITE_PACKAGES = sysconfig.get_paths()["purelib"]  # this checkout's .venv: the box's "prepared" environment
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))


class BoxEmulator(VastEmulator):
    """The emulator, plus: destroying an instance ends what runs on the box."""

    def __init__(self, *, on_destroy, **kwargs):
        super().__init__(**kwargs)
        self.on_destroy = on_destroy

    def route(self, method, path, query, body, headers):
        result = super().route(method, path, query, body, headers)
        if method == "DELETE" and result[0] == 200 and re.fullmatch(r"/api/v0/instances/\d+/", path):
            self.on_destroy()
        return result


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def box() -> Iterator[NetnsBox]:
    """A network namespace with its own home over /root (box_home), one sshd."""
    with box_for_module() as box:
        yield box


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[FakeHub]:
    root = tmp_path_factory.mktemp("e2e-hub")
    with FakeHub(granted=(TOKEN,), tls=make_tls_files(root / "tls"), throttle_bps=THROTTLE_BPS) as hub:
        hub.add_repo(GATED, build_csm_checkpoint(root / "csm"), gated=True)
        yield hub


@pytest.fixture(scope="module")
def relays(box, hub) -> Iterator[subprocess.Popen]:
    """The stand-in at 127.0.0.1:PORT inside the box: a relay here (veth address -> 127.0.0.1) and one in the box."""
    here = Relay((box.host_addr, 0), ("127.0.0.1", hub.port)).start()
    relay = [sys.executable, "-m", "tests.fakes.tcp_relay", "127.0.0.1", str(hub.port), box.host_addr, str(here.port)]
    there = subprocess.Popen([*box.exec_prefix(), *relay], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert there.stdout.readline().strip() == "listening"
    yield there
    there.send_signal(signal.SIGTERM)
    there.wait(10)
    here.stop()


@pytest.fixture(scope="module")
def box_home(box, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("box-home")


@pytest.fixture(scope="module")
def sshd(box, box_home, hub, relays, tmp_path_factory):
    """The box's sshd; every session (so the server) sees the stand-in as its Hub, and a full-size random Mimi."""
    from tests.fakes.sshd import start_sshd

    env = {**hub.client_env(), "HF_HUB_DISABLE_TELEMETRY": "1", "CSM_MIMI_WEIGHTS": "random"}
    root = tmp_path_factory.mktemp("box-sshd")
    prefix = box_prefix(box, box_home, (BASE_PYTHON, SITE_PACKAGES, str(ROOT)))
    server = start_sshd(root, listen=box.box_addr, prefix=prefix, env=env)
    yield server
    server.stop()


@pytest.fixture
def vast(sshd, box, relays):
    keep = {sshd.proc.pid, relays.pid}
    emu = BoxEmulator(
        strict=False,  # vast's quirks have their own tests; this box is the namespace's own sshd
        same_host_port=True,
        ssh_host=sshd.host,
        ssh_port=sshd.port,
        authorized_keys=sshd.authorized_keys,
        on_destroy=lambda: kill_box_processes(box, keep=keep),
    )
    emu.start()
    yield emu
    emu.stop()
    kill_box_processes(box, keep=keep)


@pytest.fixture
def deploy(vast_env):
    """The real `deploy` with the operator's environment minus any Hub token of this machine (HOME is the test's)."""
    base = {k: v for k, v in vast_env.items() if not k.startswith(("HF_", "HUGGING_FACE"))}

    def run(*args: str, timeout: float = 120, **env: str):
        return run_deploy(list(args), {**base, **env}, timeout=timeout)

    return run


def provision_args(*extra: str) -> list[str]:
    box = ["--box-python", BASE_PYTHON, "--box-site-packages", SITE_PACKAGES]
    # --no-watchdog: this kind emulator gives the box no instance key, and a watchdog that cannot arm fails provision
    return ["provision", "--runtime", "--gpu", "4090", "--model", GATED, *box, "--no-autotune", "--no-watchdog", *extra]


def test_gated_checkpoint_with_a_token_over_a_pinned_tls_endpoint(
    deploy, vast, hub, box, box_home, deploy_home, tmp_path
):
    env = {"HF_TOKEN": TOKEN}
    res = deploy(*provision_args("--replicas", "1", "--runtime-timeout", "300", "--json"), timeout=540, **env)
    assert res.returncode == 0, res.stderr[-4000:]
    (replica,) = json.loads(res.stdout)["replicas"]
    assert replica["access"] == "direct" and replica["endpoint"] == f"https://{box.box_addr}:8000"
    # the download was shown from the box while it ran
    assert f"downloading {GATED} on the box: " in res.stderr and "%)" in res.stderr, res.stderr[-3000:]
    assert "Hub token (HF_TOKEN) put on the box" in res.stderr
    assert f"{GATED}/model.safetensors" in hub.fetched(GATED)

    (row,) = rows(deploy_home)
    box_dir = box_home / "csm-deploy"
    # the token: a 0600 file on the box only; here nothing kept (the upload's temp file is gone)
    assert (box_dir / "hf-token").read_text().strip() == TOKEN
    assert (box_dir / "hf-token").stat().st_mode & 0o777 == 0o600
    assert files_containing(box_home, TOKEN.encode()) == [str(box_dir / "hf-token")]
    assert files_containing(deploy_home, TOKEN.encode()) == []  # ledger, logs, tokens, certs, gateway
    assert TOKEN not in res.stdout + res.stderr
    server_pid = row.meta["server_pid"]
    for part in ("cmdline", "environ"):
        assert TOKEN.encode() not in Path(f"/proc/{server_pid}/{part}").read_bytes()
    assert row.meta["hf_token"] == "HF_TOKEN"

    # TLS: the certificate the box made is the one pinned, and it is what the public port presents
    pem = Path(row.meta["tls_cert"])
    assert pem.read_bytes() == (box_dir / "tls" / "cert.pem").read_bytes()
    served = ssl.get_server_certificate((box.box_addr, 8000)).encode()
    from deploy.remote.tls import pem_fingerprint

    assert pem_fingerprint(served) == row.meta["tls_cert_sha256"]
    assert (box_dir / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    assert not list(deploy_home.rglob("key.pem"))  # the key never leaves the box
    with pytest.raises(httpx.TransportError):  # no plain HTTP on the public port
        httpx.get(f"http://{box.box_addr}:8000/health", timeout=10)

    # generate through the recorded endpoint, trusting the pinned certificate
    wav = str(tmp_path / "a.wav")
    gen = deploy("generate", str(row.id), "Hello from the box.", "-o", wav, "--max-audio-ms", "400", "--json", **env)
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert json.loads(gen.stdout)["audio_s"] > 0

    # the gateway reaches the replica over TLS against the same pin; clients talk to it on loopback
    port = free_port()
    start = deploy("gateway", "start", "--port", str(port), "--check-interval", "0.2", **env)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        config = (deploy_home / "gateway" / "default" / "haproxy.cfg").read_text()
        assert f"server replica {box.box_addr}:8000 ssl verify required ca-file {pem}" in config
        client_token = (deploy_home / "tokens" / "gateway-default.token").read_text().strip()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=client_token, max_retries=0, timeout=120)
        speech = client.audio.speech.with_streaming_response
        request = {"model": "tts-1", "voice": "alloy", "input": "Through the gateway.", "response_format": "wav"}
        with speech.create(**request, extra_body={"max_audio_ms": 400}) as response:
            audio = b"".join(response.iter_bytes())
        assert audio[:4] == b"RIFF" and len(audio) > 44
    finally:
        deploy("gateway", "stop", "--now", **env)

    # a server presenting another certificate than the pinned one is refused before the token goes out
    from csm_runtime.server.tls import make_self_signed

    other = make_self_signed(tmp_path / "other", (box.box_addr,))
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        ledger.pin_tls_cert(row.id, str(other.cert), pem_fingerprint(other.cert.read_bytes()))
    refused = deploy("generate", str(row.id), "Hi.", "-o", str(tmp_path / "b.wav"), **env)
    assert refused.returncode == 1
    assert "presented a TLS certificate other than the pinned one" in refused.stderr.strip().splitlines()[-1]

    down = deploy("teardown", "--all", "--yes", **env)
    assert down.returncode == 0, down.stderr
    assert vast.running_ids() == set() and unknown_running(vast, deploy_home) == set()
    assert TOKEN not in b"".join(p.read_bytes() for p in deploy_home.glob("ledger.sqlite3*")).decode(errors="replace")


def test_gated_checkpoint_without_a_token_is_one_line_at_ready(deploy, vast, hub, deploy_home):
    before = len(hub.fetched(GATED))
    res = deploy(*provision_args("--max-offers", "1", "--runtime-timeout", "300"), timeout=400)
    assert res.returncode == 1, res.stdout
    assert "no Hugging Face token found here" in res.stderr and f"{GATED} is gated" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last == (
        f"Error: step 'ready' failed: the server could not start: {GATED} is a gated repository and no Hub token was "
        f"sent: request access on {hub.url}/{GATED}, then give a token of that account: set HF_TOKEN, run "
        "`hf auth login`, or name a token file with --hf-token-file"
    ), res.stderr[-3000:]
    assert len(hub.fetched(GATED)) == before  # nothing downloaded
    (row,) = rows(deploy_home)
    assert row.status == "destroyed" and "is a gated repository" in row.reason
    assert vast.running_ids() == set() and unknown_running(vast, deploy_home) == set()
