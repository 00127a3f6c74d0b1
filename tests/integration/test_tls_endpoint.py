"""TLS on a public bind, end to end on this machine: a real `csm-runtime serve --host 0.0.0.0` (tiny-random) serves
HTTPS only; the official openai client streams speech trusting the server's certificate alone; a client that pins
another certificate is refused before it sends the token (openai, `deploy generate`); the HAProxy gateway verifies
the replica against its pinned certificate and refuses it with another one; your own certificate works too."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from csm_runtime.server.tls import make_self_signed
from deploy.gateway.config import Backend
from deploy.gateway.runtime_api import server_stats
from deploy.provision.summary import client_lines
from deploy.remote.tls import client_context, pem_fingerprint
from tests.conftest import run_deploy
from tests.fakes.gateway import one_replica_gateway
from tests.fakes.server_fixtures import free_port, wait_ready

SERVE = [sys.executable, "-m", "csm_runtime.cli", "serve"]
TOKEN = "tls-test-token-0123456789"


@dataclass
class TlsServer:
    port: int
    cert: Path
    token_file: Path
    log: Path
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def start_server(tmp: Path, *extra: str) -> TlsServer:
    tmp.mkdir(parents=True, exist_ok=True)
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    log = tmp / "serve.log"
    env = {**os.environ, "CSM_DEVICE": "cpu", "CSM_CPU_THREADS": "1", "CSM_MAX_STREAMS": "2"}
    args = ["--model", "tiny-random", "--host", "0.0.0.0", "--port", str(port), "--token-file", str(token_file)]
    args += ["--profile", "off", "--tls-dir", str(tmp / "tls"), *extra]
    with log.open("w") as out:
        proc = subprocess.Popen([*SERVE, *args], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = TlsServer(port, tmp / "tls" / "cert.pem", token_file, log, proc)
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return server


def stop_server(server: TlsServer) -> None:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[TlsServer]:
    s = start_server(tmp_path_factory.mktemp("tls-server"))
    with httpx.Client(
        base_url=s.url, verify=client_context(s.cert), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
    ) as c:
        wait_ready(c)
    yield s
    stop_server(s)
    assert TOKEN not in s.log.read_text()


@pytest.fixture(scope="module")
def wrong_cert(tmp_path_factory) -> Path:
    """Another self-signed certificate for the same names: what an impostor on the address would present."""
    return make_self_signed(tmp_path_factory.mktemp("impostor"), ("127.0.0.1", "localhost")).cert


def served_certificate(port: int) -> bytes:
    return ssl.get_server_certificate(("127.0.0.1", port)).encode()


def test_a_public_bind_answers_no_plain_http(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        sock.settimeout(10)
        try:
            answer = sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert not answer.startswith(b"HTTP/")  # no HTTP at all: at most a TLS alert
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=10)


def test_the_served_certificate_is_the_file_and_the_log_names_it(server):
    digest = pem_fingerprint(server.cert.read_bytes())
    assert pem_fingerprint(served_certificate(server.port)) == digest
    text = server.log.read_text()
    assert f"serving tiny-random on https://0.0.0.0:{server.port}" in text and f"sha256 {digest}" in text


def test_openai_client_streams_over_tls_with_the_pinned_certificate(server, wrong_cert):
    client = openai.OpenAI(
        base_url=server.url + "/v1",
        api_key=TOKEN,
        max_retries=0,
        timeout=120,
        http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(server.cert))),
    )
    chunks = []
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Hello over TLS.", response_format="wav", extra_body={"max_audio_ms": 400}
    ) as response:
        for chunk in response.iter_bytes():
            chunks.append(chunk)
    audio = b"".join(chunks)
    assert audio[:4] == b"RIFF" and len(audio) > 44

    impostor = openai.OpenAI(
        base_url=server.url + "/v1",
        api_key=TOKEN,
        max_retries=0,
        timeout=30,
        http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(wrong_cert))),
    )
    with pytest.raises(openai.APIConnectionError) as err:
        impostor.models.list()
    assert "CERTIFICATE_VERIFY_FAILED" in repr(err.value.__cause__) or "certificate verify failed" in str(
        err.value.__cause__
    )


def test_the_client_lines_provision_prints_work_as_pasted(server, tmp_path):
    info = {
        "endpoint": server.url,
        "access": "direct",
        "token_file": str(server.token_file),
        "tls_cert": str(server.cert),
        "tls_cert_sha256": pem_fingerprint(server.cert.read_bytes()),
    }
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in client_lines(info)}
    assert lines["tls"].startswith(f"certificate pinned: {server.cert}")
    scope: dict = {}
    exec(lines["python"], scope)  # noqa: S102 - the line an operator pastes
    assert "tiny-random" in [m.id for m in scope["client"].models.list()]
    res = subprocess.run(["bash", "-c", lines["curl"]], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "hello.wav").read_bytes()[:4] == b"RIFF"


def test_deploy_generate_trusts_only_the_given_certificate(server, wrong_cert, tmp_path, deploy_home):
    env = {**os.environ, "DEPLOY_HOME": str(deploy_home)}
    common = ["generate", "--endpoint", server.url, "--token-file", str(server.token_file), "--max-audio-ms", "400"]
    ok = run_deploy([*common, "--cacert", str(server.cert), "Hi.", "-o", str(tmp_path / "a.wav"), "--json"], env)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "a.wav").read_bytes()[:4] == b"RIFF"
    bad = run_deploy([*common, "--cacert", str(wrong_cert), "Hi.", "-o", str(tmp_path / "b.wav")], env)
    assert bad.returncode == 1
    line = bad.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: ") and "presented a TLS certificate other than the pinned one" in line, bad.stderr
    assert not (tmp_path / "b.wav").exists()
    # without --cacert the system's roots do not know a self-signed certificate either
    bare = run_deploy([*common, "Hi.", "-o", str(tmp_path / "c.wav")], env)
    assert bare.returncode == 1 and "TLS certificate" in bare.stderr


@pytest.mark.usefixtures("haproxy")
def test_gateway_verifies_the_replica_against_its_pinned_certificate(server, wrong_cert, tmp_path):
    client_token = "gateway-client-token-0123"
    for ca, expect in ((server.cert, 200), (wrong_cert, 503)):
        backend = Backend("r1", f"127.0.0.1:{server.port}", TOKEN, ca_file=str(ca))
        with one_replica_gateway(tmp_path, f"gw{expect}", backend, client_token) as gateway:
            assert f"ssl verify required ca-file {ca}" in gateway.config
            headers = {"Authorization": f"Bearer {client_token}"}
            r = httpx.get(f"{gateway.url}/ready", headers=headers, timeout=30)
            assert r.status_code == expect, r.text
            if expect == 200:
                body = {
                    "model": "tts-1",
                    "voice": "alloy",
                    "input": "Hi.",
                    "response_format": "pcm",
                    "max_audio_ms": 160,
                }
                speech = httpx.post(f"{gateway.url}/v1/audio/speech", json=body, headers=headers, timeout=60)
                assert speech.status_code == 200 and len(speech.content) > 0
            else:
                assert not server_stats(gateway.paths)["r1"].up  # the health check itself is refused


def test_own_certificate_and_key_are_served(tmp_path):
    own = make_self_signed(tmp_path / "own", ("127.0.0.1",))
    s = start_server(tmp_path / "srv", "--ssl-certfile", str(own.cert), "--ssl-keyfile", str(own.key))
    try:
        assert pem_fingerprint(served_certificate(s.port)) == pem_fingerprint(own.cert.read_bytes())
        assert not (tmp_path / "srv" / "tls").exists()  # nothing self-signed was made
    finally:
        stop_server(s)
