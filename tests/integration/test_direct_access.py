"""The mapped-port path: vast is asked for `-p 8000:8000`, reports `ports` / `public_ipaddr`, and the ready step uses
that address directly when it answers, else (no mapping, --tunnel, a port that stays silent) the SSH tunnel.

vast.ai is the emulator (tests/fakes/vast_emulator.py) driven by the real vastai CLI; the box is the loopback sshd with a
real tiny-random csm-runtime server on it (tests/fakes/ssh_rental.py). The full direct path on a box with its own address
is in tests/e2e/test_e2e_provision.py.
"""

from __future__ import annotations

import pytest

from deploy.ledger import DIRECT, TUNNEL, Ledger
from deploy.providers import DirectAddress
from deploy.providers.local import LocalProvider
from deploy.providers.records import Box, Offer, State
from deploy.providers.ssh import SshProvider
from deploy.providers.vast import VastProvider
from deploy.providers.vast_records import parse_ports
from deploy.providers.vastai_cli import VastCli
from deploy.provision.driver import Context
from deploy.provision.layout import BoxLayout
from deploy.provision.options import ProvisionOptions, RuntimeOptions
from deploy.remote.host import RemoteHost
from deploy.settings import load_settings
from tests.fakes.ssh_rental import start_ssh_rental, stop_group
from tests.fakes.vast_emulator import closed_port


def test_create_asks_for_the_port_mapping_and_the_box_reports_it(vast_env, vast):
    cli = VastCli()
    mapped = cli.create_instance("1001", image="img", disk_gb=10, label="t:a:1", ports=(8000,))
    plain = cli.create_instance("1002", image="img", disk_gb=10, label="t:a:2")
    # what vastai 1.9.1 sent for `--env "-p 8000:8000"`: {"-p 8000:8000": "1"} in the create body's env; with
    # `--ssh --direct` vast also maps the box's SSH port (22/tcp)
    ssh_port = str(vast.box(int(mapped)).port)
    assert vast.instances[int(mapped)]["ports"] == {
        "8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41000"}],
        "22/tcp": [{"HostIp": "0.0.0.0", "HostPort": ssh_port}],
    }
    assert list(vast.instances[int(plain)]["ports"]) == ["22/tcp"]
    vast.advance(5)
    box = cli.show_instance(mapped)
    assert (
        box.state is State.RUNNING and box.public_ip == vast.ssh_host and box.ports == {8000: 41000, 22: int(ssh_port)}
    )
    assert box.direct_ssh and (box.ssh_host, box.ssh_port) == (vast.public_ipaddr, int(ssh_port))
    assert cli.show_instance(plain).ports == {22: vast.box(int(plain)).port}


def test_port_table_parsing_keeps_tcp_and_skips_junk():
    raw = {
        "8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41234"}, {"HostIp": "::", "HostPort": "41234"}],
        "9000/udp": [{"HostIp": "0.0.0.0", "HostPort": "1"}],
        "22/tcp": [],
        "x/tcp": [{"HostPort": "5"}],
        "7000": [{"HostPort": "not a port"}],
    }
    assert parse_ports(raw) == {8000: 41234}
    assert parse_ports(None) == {} and parse_ports([]) == {}


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        (Box("vast", "1", State.RUNNING, public_ip="203.0.113.7", ports={8000: 41234}), ("203.0.113.7", 41234)),
        (Box("vast", "1", State.RUNNING, public_ip="203.0.113.7", ports={}), None),  # nothing mapped
        (Box("vast", "1", State.RUNNING, public_ip="203.0.113.7", ports={9000: 41234}), None),  # another port
        (Box("vast", "1", State.RUNNING, public_ip=None, ports={8000: 41234}), None),
        (None, None),
    ],
)
def test_vast_answers_directly_only_on_a_mapping_for_the_server_port(box, expected):
    direct = VastProvider(cli=object()).direct_address(box, 8000)
    assert (direct.host, direct.port, direct.bind) == (*expected, "0.0.0.0") if expected else direct is None


def test_the_ssh_provider_never_maps_a_port_and_local_answers_on_loopback(tmp_path):
    assert SshProvider("h").direct_address(Box("ssh", "u@h:22", State.RUNNING), 8000) is None
    assert LocalProvider(tmp_path).direct_address(None, 8123) == DirectAddress("127.0.0.1", 8123, "127.0.0.1")


@pytest.fixture
def ssh_server(sshd, tmp_path):
    server = start_ssh_rental(sshd, tmp_path)
    yield server
    stop_group(server.pid)


def _ready(sshd, server, direct) -> tuple[dict, list[str]]:
    """Run the real `ready` step against the rental, as the provision driver would after `start`."""
    from deploy.provision.ready import step_ready

    settings = load_settings()
    logs: list[str] = []
    with Ledger(settings.ledger_path) as ledger:
        rental = ledger.get(server.id)
        host = RemoteHost(sshd.host, sshd.port, sshd.user, settings.ssh_key_path, pinned_key=rental.host_key)
        opts = RuntimeOptions(model="tiny-random", mode="current", port=server.port, runtime_timeout_s=60)
        ctx = Context(
            settings=settings,
            options=ProvisionOptions(provider="ssh"),
            provider=SshProvider(sshd.host, sshd.port, sshd.user),
            ledger=ledger,
            attempt_id="test",
            offer=Offer("ssh", rental.provider_id, "cpu"),
            log=logs.append,
            rental=rental,
            host=host,
            runtime=opts,
            layout=BoxLayout("x", "current"),
            server_pid=server.pid,
            direct=direct,
        )
        try:
            step_ready(ctx)
        finally:
            host.close()
        return ledger.get(server.id).meta, logs


def test_ready_uses_the_mapped_port_when_it_answers(sshd, ssh_server):
    meta, _ = _ready(sshd, ssh_server, DirectAddress("127.0.0.1", ssh_server.port, "0.0.0.0"))
    assert meta["access"] == DIRECT and meta["endpoint"] == f"http://127.0.0.1:{ssh_server.port}"


def test_ready_falls_back_to_the_tunnel_without_a_mapping_or_when_it_stays_silent(sshd, ssh_server, monkeypatch):
    from deploy.provision import ready

    meta, logs = _ready(sshd, ssh_server, None)
    assert meta["access"] == TUNNEL and meta["endpoint"] == f"http://127.0.0.1:{ssh_server.port}"
    assert not any("does not answer" in line for line in logs)

    monkeypatch.setattr(ready, "DIRECT_PROBE_S", 1.0)
    silent = closed_port()
    meta, logs = _ready(sshd, ssh_server, DirectAddress("127.0.0.1", silent, "0.0.0.0"))
    assert meta["access"] == TUNNEL and meta["endpoint"] == f"http://127.0.0.1:{ssh_server.port}"
    assert any(f"port http://127.0.0.1:{silent} does not answer" in line for line in logs)
