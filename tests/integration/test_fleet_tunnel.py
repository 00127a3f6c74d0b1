"""A replica whose server listens on its box's loopback (access `ssh-tunnel`, as on vast/ssh boxes) is reached by the
gateway through an OpenSSH tunnel the toolkit keeps open, with the ledger's pinned host key as the only one accepted.
The box is the real loopback sshd; the server a real `csm-runtime serve` (tiny-random)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from deploy.errors import RemoteError
from deploy.fleet.probe import probe
from deploy.ledger import Ledger
from deploy.ledger.fleets import FleetStore
from deploy.provision.box_steps import ensure_ssh_key
from deploy.remote import tunnels
from deploy.settings import load_settings
from tests.conftest import run_deploy
from tests.fakes.server_fixtures import free_port

pytestmark = pytest.mark.usefixtures("haproxy")  # fails with the apt-get line when haproxy is missing


@pytest.fixture
def box_server(tmp_path):
    token = "tunnel-replica-token-0123456789"
    (tmp_path / "tok").write_text(token)
    port = free_port()
    env = {**os.environ, "CSM_DEVICE": "cpu", "CSM_CPU_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "csm_runtime.cli", "serve", "--model", "tiny-random", "--port",
                             str(port), "--token-file", str(tmp_path / "tok"), "--profile", "off"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 90
    while not probe(f"http://127.0.0.1:{port}", token, with_metrics=False).ready:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    yield port, tmp_path / "tok"
    proc.terminate()
    proc.wait(30)


def _replica(home, sshd, port, token_file, host_key):
    with Ledger(home / "ledger.sqlite3") as ledger:
        r = ledger.record_intent(attempt_id="tun", provider="ssh", label_prefix="csm-deploy")
        ledger.record_rented(r.id, f"{sshd.user}@{sshd.host}:{sshd.port}")
        ledger.record_connection(r.id, ssh_host=sshd.host, ssh_port=sshd.port, ssh_user=sshd.user)
        ledger.pin_host_key(r.id, host_key)
        ledger.update_meta(r.id, endpoint=f"http://127.0.0.1:{port}", access="ssh-tunnel", port=port,
                           token_file=str(token_file))  # fmt: skip
        store = FleetStore(ledger)
        fleet = store.find("default") or store.create("default", {"provider": "ssh"})
        return store.add(fleet, r.id), ledger.get(r.id)


def test_gateway_reaches_a_replica_through_a_pinned_ssh_tunnel(sshd, box_server, deploy_home):
    port, token_file = box_server
    settings = load_settings()
    with open(sshd.authorized_keys, "a") as f:
        f.write(ensure_ssh_key(settings) + "\n")
    replica, _rental = _replica(deploy_home, sshd, port, token_file, sshd.host_key_pub)
    env = {**os.environ, "DEPLOY_HOME": str(deploy_home)}
    gw_port = free_port()
    res = run_deploy(["gateway", "start", "--port", str(gw_port), "--json"], env)
    try:
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["servers"][replica.name]["status"] == "UP"
        tunnel_port = tunnels.current(deploy_home / "gateway" / "default", replica.name)
        assert tunnel_port and tunnel_port != port
        cfg = (deploy_home / "gateway" / "default" / "haproxy.cfg").read_text()
        assert f"server replica 127.0.0.1:{tunnel_port}" in cfg  # through the tunnel, not the box's own port
        token = (deploy_home / "tokens" / "gateway-default.token").read_text().strip()
        body = {"model": "tts-1", "voice": "echo", "input": "Through the tunnel.", "response_format": "pcm",
                "max_audio_ms": 400}  # fmt: skip
        r = httpx.post(f"http://127.0.0.1:{gw_port}/v1/audio/speech", json=body,
                       headers={"Authorization": f"Bearer {token}"}, timeout=60)  # fmt: skip
        assert r.status_code == 200 and len(r.content) == 400 * 48
    finally:
        assert run_deploy(["gateway", "stop"], env).returncode == 0
    assert tunnels.current(deploy_home / "gateway" / "default", replica.name) is None  # closed with the gateway


def test_a_host_key_that_is_not_the_pinned_one_opens_no_tunnel(sshd, deploy_home, tmp_path):
    settings = load_settings()
    with open(sshd.authorized_keys, "a") as f:
        f.write(ensure_ssh_key(settings) + "\n")
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    tok = tmp_path / "tok"
    tok.write_text("some-token-0123456789")
    replica, rental = _replica(deploy_home, sshd, free_port(), tok, other)
    directory = deploy_home / "gateway" / "default"
    with pytest.raises(RemoteError, match="SSH tunnel to replica .* exited: Host key verification failed"):
        tunnels.ensure(directory, replica.name, rental, settings.ssh_key_path, timeout=10)
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in (directory / f"tunnel-{replica.name}.log").read_text()


def test_the_pinned_host_key_with_a_login_the_box_refuses_is_a_login_error(sshd, deploy_home, tmp_path):
    """The control for the test above: the same tunnel with the right pin but a key the box never authorized fails
    on the login, so a tunnel that failed for any reason cannot pass for a refused host key."""
    settings = load_settings()
    ensure_ssh_key(settings)  # made, never authorized on the box
    tok = tmp_path / "tok"
    tok.write_text("some-token-0123456789")
    replica, rental = _replica(deploy_home, sshd, free_port(), tok, sshd.host_key_pub)
    directory = deploy_home / "gateway" / "default"
    with pytest.raises(RemoteError, match=r"SSH tunnel to replica .* exited: .*Permission denied \(publickey\)"):
        tunnels.ensure(directory, replica.name, rental, settings.ssh_key_path, timeout=10)
    assert "Host key verification failed" not in (directory / f"tunnel-{replica.name}.log").read_text()
