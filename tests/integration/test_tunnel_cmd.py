"""`deploy tunnel ID`: the console script against an `ssh` rental on the loopback sshd with a real tiny-random
server on the box's loopback (tests/fakes/ssh_rental.py): the printed URL answers /health and, with the token, /ready;
SIGINT closes the tunnel and exits 0. Direct rentals just print their endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import httpx
import pytest

from deploy.ledger import Ledger
from deploy.remote.host import free_port
from deploy.settings import load_settings
from tests.conftest import DEPLOY_BIN
from tests.fakes.ssh_rental import start_ssh_rental, stop_group


@pytest.fixture
def ssh_server(sshd, tmp_path):
    server = start_ssh_rental(sshd, tmp_path)
    yield server
    stop_group(server.pid)


def _env(deploy_home) -> dict:
    return {**os.environ, "DEPLOY_HOME": str(deploy_home)}


def test_tunnel_serves_the_rental_until_sigint(ssh_server, deploy_home):
    want = free_port()
    proc = subprocess.Popen(
        [str(DEPLOY_BIN), "tunnel", str(ssh_server.id), "--local-port", str(want)],
        env=_env(deploy_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url_line = proc.stdout.readline()
        token_line = proc.stdout.readline()
        assert url_line.startswith("url:"), (url_line, proc.stderr.read() if proc.poll() is not None else "")
        url = url_line.split()[-1]
        assert url == f"http://127.0.0.1:{want}"
        assert token_line.split()[-1] == str(ssh_server.token_file)
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        token = ssh_server.token_file.read_text().strip()
        assert httpx.get(url + "/ready", timeout=10).status_code == 401  # the tunnel carries no credentials
        ready = httpx.get(url + "/ready", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert ready.status_code in (200, 503) and "status" in ready.json()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "tunnel closed" in err
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/health", timeout=3)


def test_tunnel_refuses_a_port_in_use_and_unknown_or_closed_rentals(ssh_server, deploy_home):
    import socket

    env = _env(deploy_home)
    run = lambda *a: subprocess.run([str(DEPLOY_BIN), *a], env=env, capture_output=True, text=True, timeout=60)  # noqa: E731
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        res = run("tunnel", str(ssh_server.id), "--local-port", str(busy.getsockname()[1]))
    assert res.returncode == 1 and res.stderr.strip().endswith("is already in use on this machine")
    res = run("tunnel", "999")
    assert res.returncode == 1 and "no rental 999" in res.stderr
    with Ledger(load_settings().ledger_path) as ledger:
        ledger.close_rental(ssh_server.id, "released", "test")
    res = run("tunnel", str(ssh_server.id))
    assert res.returncode == 1 and "is released" in res.stderr


def test_direct_rental_just_prints_its_endpoint(deploy_home):
    with Ledger(load_settings().ledger_path) as ledger:
        rental = ledger.record_intent(attempt_id="t", provider="vast", label_prefix="csm-deploy")
        ledger.record_rented(rental.id, "7000001")
        ledger.update_meta(
            rental.id, endpoint="http://203.0.113.7:41000", access="direct", port=8000, token_file="/x/t.token"
        )
    res = subprocess.run(
        [str(DEPLOY_BIN), "tunnel", str(rental.id), "--json"],
        env=_env(deploy_home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"url": "http://203.0.113.7:41000", "token_file": "/x/t.token", "access": "direct"}
