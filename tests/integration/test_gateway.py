"""The gateway's config as a pure function (checked by the real HAProxy's own parser), the files it writes, and the
errors an operator meets: HAProxy missing, port in use, unknown replica or fleet, a replica without a server."""

from __future__ import annotations

import os
import socket
import stat
import subprocess

import pytest

from csm_runtime.server.tls import make_self_signed
from deploy.errors import NotFoundError, UsageError
from deploy.fleet.model import choose_for_removal, due_for_replacement
from deploy.fleet.probe import parse_metrics
from deploy.gateway import binary
from deploy.gateway import config as gw_config
from deploy.gateway.binary import find_haproxy
from deploy.gateway.errors import GatewayError
from deploy.gateway.files import Paths, write_private
from deploy.gateway.process import check_port_free
from deploy.gateway.tokens import client_token, scrub
from deploy.ledger import Ledger
from deploy.ledger.fleets import FleetStore
from tests.conftest import run_deploy

HAPROXY = "/usr/sbin/haproxy"
needs_haproxy = pytest.mark.usefixtures("haproxy")  # fails with the apt-get line when haproxy is missing
CLIENT = "client-token-abcdefgh"


def _cfg(tmp_path, **kw) -> gw_config.GatewayConfig:
    return gw_config.GatewayConfig(
        client_token=CLIENT, sockets_dir=str(tmp_path), state_file=str(tmp_path / "s.state"), port=18123, **kw
    )


BACKENDS = [
    gw_config.Backend("r1", "127.0.0.1:9001", "tok-one-123456"),
    gw_config.Backend("r2", "127.0.0.1:9002", "tok-two-123456"),
]


def test_render_is_pure_and_has_what_streams_need(tmp_path):
    text = gw_config.render(_cfg(tmp_path), BACKENDS)
    assert text == gw_config.render(_cfg(tmp_path), BACKENDS)
    assert "balance leastconn" in text
    assert "http-check send meth GET uri /ready" in text and "http-check expect status 200" in text
    assert "option http-buffer-request" in text and "no option httpclose" in text  # requests whole, responses streamed
    assert "timeout tunnel 3600s" in text and "timeout server 600s" in text
    assert f'req.hdr(Authorization) -m str "Bearer {CLIENT}"' in text
    assert "http-request return status 401" in text and "acl public path /health / " in text
    assert "acl public path_beg /static/" in text  # the playground page loads without the token
    # each replica's own token goes only into its own proxy, towards its own address
    r1 = text[text.index("listen r1") :].split("\n\n")[0]
    assert 'set-header Authorization "Bearer tok-one-123456"' in r1 and "server replica 127.0.0.1:9001" in r1
    assert "tok-two" not in r1
    assert f"server r1 unix@{tmp_path}/r1.sock" in text and f"server r2 unix@{tmp_path}/r2.sock" in text


@needs_haproxy
def test_haproxy_accepts_the_rendered_config(tmp_path):
    cfg = tmp_path / "h.cfg"
    (tmp_path / "s.state").write_text("1\n")
    cfg.write_text(gw_config.render(_cfg(tmp_path), BACKENDS))
    res = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "WARNING" not in res.stderr, res.stderr


@needs_haproxy
def test_an_https_replica_is_verified_against_its_pinned_certificate(tmp_path):
    pem = tmp_path / "rental-3.pem"
    pem.write_bytes(make_self_signed(tmp_path / "tls", ("127.0.0.1",)).cert.read_bytes())
    backends = [gw_config.Backend("r1", "203.0.113.7:41000", "tok-one-123456", ca_file=str(pem)), BACKENDS[1]]
    text = gw_config.render(_cfg(tmp_path), backends)
    r1 = text[text.index("listen r1") :].split("\n\n")[0]
    assert f"server replica 203.0.113.7:41000 ssl verify required ca-file {pem}" in r1
    r2 = text[text.index("listen r2") :].split("\n\n")[0]
    assert "server replica 127.0.0.1:9002\n" in r2 + "\n" and "ssl" not in r2  # plain http stays plain
    (tmp_path / "s.state").write_text("1\n")
    (tmp_path / "h.cfg").write_text(text)
    res = subprocess.run([HAPROXY, "-c", "-f", str(tmp_path / "h.cfg")], capture_output=True, text=True)
    assert res.returncode == 0 and "WARNING" not in res.stderr, res.stderr
    with pytest.raises(UsageError, match="must be absolute, without spaces"):
        gw_config.render(_cfg(tmp_path), [gw_config.Backend("r1", "127.0.0.1:1", "tok-one-123456", ca_file="a b")])
    assert gw_config.address_of("https://203.0.113.7:41000") == "203.0.113.7:41000"


@pytest.mark.parametrize(
    "backends,message",
    [
        ([gw_config.Backend("r1", "127.0.0.1:9001", 'bad"token x')], "replica r1: the token"),
        ([gw_config.Backend("r1", "127.0.0.1:9001", "short")], "replica r1: the token"),
        ([gw_config.Backend("r1", "nohost", "tok-one-123456")], "is not host:port"),
        ([gw_config.Backend("r1", "127.0.0.1:99999", "tok-one-123456")], "is not host:port"),
        ([BACKENDS[0], BACKENDS[0]], "unique"),
        ([gw_config.Backend("r 1", "127.0.0.1:9001", "tok-one-123456")], "not a valid HAProxy server name"),
    ],
)
def test_bad_input_is_refused_before_haproxy_sees_it(tmp_path, backends, message):
    with pytest.raises(UsageError, match=message):
        gw_config.render(_cfg(tmp_path), backends)


def test_address_of_endpoints():
    assert gw_config.address_of("http://127.0.0.1:8001") == "127.0.0.1:8001"
    assert gw_config.address_of("http://[::1]:8001/") == "[::1]:8001"
    with pytest.raises(UsageError):
        gw_config.address_of("https://example.org")


def test_files_hold_tokens_so_they_are_private(tmp_path):
    path = tmp_path / "x.cfg"
    write_private(path, "secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    tok_path, token = client_token(tmp_path, "default")
    assert stat.S_IMODE(tok_path.stat().st_mode) == 0o600 and len(token) >= 32
    assert client_token(tmp_path, "default")[1] == token  # made once, then reused
    assert scrub(f"line with {token} in it", [token]) == "line with *** in it"


def test_long_homes_get_short_socket_paths(tmp_path):
    deep = tmp_path / ("d" * 90)
    p = Paths.for_fleet(deep, "default")
    assert len(str(p.sockets / "r123456.sock")) < 100 and p.dir == deep / "gateway" / "default"


def test_port_in_use_is_one_clear_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UsageError, match=f"port {port} on 127.0.0.1 is in use"):
            check_port_free("127.0.0.1", port)


def test_haproxy_missing_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(binary.os, "access", lambda *a: False)
    with pytest.raises(GatewayError, match="apt-get install haproxy"):
        find_haproxy()
    with pytest.raises(GatewayError, match="DEPLOY_HAPROXY=.* is not an executable"):
        find_haproxy(str(tmp_path / "nope"))


def test_metrics_parsing_counts_only_served_speech():
    text = "\n".join(
        [
            "# HELP csm_requests_total x",
            'csm_requests_total{route="/v1/audio/speech",status="200"} 5.0',
            'csm_requests_total{route="/v1/audio/speech",status="429"} 2.0',
            'csm_requests_total{route="/ready",status="200"} 99.0',
            "csm_audio_seconds_total 12.5",
            "csm_active_streams 1.0",
            "csm_queue_depth 0.0",
            'csm_requests_rejected_total{reason="queue_full"} 2.0',
            'csm_requests_rejected_total{reason="not_ready"} 4.0',
        ]
    )
    m = parse_metrics(text)
    assert m == {"speech_requests": 5.0, "audio_seconds": 12.5, "active_streams": 1.0, "queue_depth": 0.0,
                 "rejected_429": 2.0}  # fmt: skip


def _ledger_with_fleet(home, n=3):
    ledger = Ledger(home / "ledger.sqlite3")
    store = FleetStore(ledger)
    fleet = store.create("default", {"provider": "local"})
    for i in range(n):
        r = ledger.record_intent(attempt_id=f"a{i}", provider="local", label_prefix="csm-deploy")
        ledger.record_rented(r.id, f"local-{i}")
        store.add(fleet, r.id)
    return ledger, store, fleet


def test_fleet_rows_decisions_and_unknown_replica(deploy_home):
    ledger, store, fleet = _ledger_with_fleet(deploy_home)
    reps = store.replicas(fleet)
    assert [r.name for r in reps] == ["r1", "r2", "r3"]
    assert [r.name for r in choose_for_removal(reps, 2)] == ["r3", "r2"]  # newest first...
    assert [r.name for r in choose_for_removal(reps, 2, unhealthy=["r1"])] == ["r1", "r3"]  # ...unhealthy before all
    assert store.replica(fleet, "2").name == "r2" and store.replica(fleet, "r2").name == "r2"
    with pytest.raises(NotFoundError, match="no replica 'r9' in fleet 'default'"):
        store.replica(fleet, "r9")
    with pytest.raises(NotFoundError, match="no fleet 'other'"):
        store.get("other")
    with pytest.raises(UsageError, match="exists already"):
        store.create("default", {})
    r1 = reps[0]
    assert due_for_replacement(r1, box_alive=False, ready=False, now=100, after_s=60)[0]
    assert not due_for_replacement(r1, box_alive=True, ready=True, now=100, after_s=60)[0]
    assert due_for_replacement(r1, box_alive=True, ready=False, now=100, after_s=0)[0]
    store.set_failing(r1, 50.0)
    assert not due_for_replacement(store.replica(fleet, "r1"), box_alive=True, ready=False, now=100, after_s=60)[0]
    assert due_for_replacement(store.replica(fleet, "r1"), box_alive=True, ready=False, now=111, after_s=60)[0]
    # a rental torn down outside the fleet leaves it
    ledger.close_rental(reps[1].rental.id, "destroyed", "teardown")
    assert [r.name for r in store.replicas(fleet)] == ["r1", "r2", "r3"]  # reading changes nothing
    assert store.retire_closed(fleet) == ["r2"]
    assert [r.name for r in store.replicas(fleet)] == ["r1", "r3"]
    ledger.close()


@needs_haproxy
def test_cli_errors_are_one_line(deploy_home):
    env = {**os.environ, "DEPLOY_HOME": str(deploy_home)}
    res = run_deploy(["gateway", "start"], env)
    assert res.returncode == 1 and res.stderr.strip().startswith("Error: no fleet 'default'"), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = run_deploy(["gateway", "restart"], env)
    assert res.returncode == 2 and res.stderr.startswith("Error: No such command 'restart'.")
    res = run_deploy(["scale", "0"], env)
    assert res.returncode == 1 and "at least 1 replica" in res.stderr
    ledger, _store, _fleet = _ledger_with_fleet(deploy_home, 1)
    ledger.close()
    res = run_deploy(["heal", "--replica", "r7"], env)
    assert res.returncode == 1 and "no replica 'r7' in fleet 'default'" in res.stderr, res.stderr
    res = run_deploy(["gateway", "start", "--port", "18124"], env)  # a replica with no server behind it
    assert res.returncode == 1 and "has no server endpoint" in res.stderr, res.stderr
    res = run_deploy(["gateway", "start", "--port", "0"], env)
    assert res.returncode == 1 and "--port must be between" in res.stderr
    res = run_deploy(["gateway", "start"], {**env, "DEPLOY_HAPROXY": "/nonexistent/haproxy"})
    assert res.returncode == 1 and "DEPLOY_HAPROXY=/nonexistent/haproxy is not an executable" in res.stderr, res.stderr
