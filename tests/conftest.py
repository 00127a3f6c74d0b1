"""Shared test fixtures.

- A network guard (autouse): any in-process connect to an address outside loopback (and outside the addresses of the
  network namespaces a test created and registered with `allow_box_address`) fails the test, and the run fails at the end
  even if the code under test swallowed the error. Subprocesses (the vastai CLI, ssh, sshd) cannot be patched from
  here; they are pointed at 127.0.0.1 by their environment instead (VAST_URL, ssh_host), and the emulator is the only
  vast.ai they know.
- Each test gets its own DEPLOY_HOME (autouse), so no test sees another's ledger or the operator's real one.
- `sshd` (one real OpenSSH server for the session), `vast` (a fresh vast.ai emulator per test whose instances point at
  that sshd), `vast_env` (the environment the real vastai CLI and `deploy` need to talk to it), `deploy_cli` (runs the
  real console script).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_BIN = ROOT / ".venv" / "bin" / "deploy"
ALLOWED_NETWORKS = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
_box_addresses: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()  # namespaces tests made (netns_box.py)
_violations: list[str] = []


def allow_box_address(address: str) -> None:
    """A network namespace this test run created (tests/fakes/netns_box.py): its address is ours, on a link of our own."""
    _box_addresses.add(ipaddress.ip_address(address))


def forget_box_address(address: str) -> None:
    _box_addresses.discard(ipaddress.ip_address(address))


def _allowed(address: object) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # AF_UNIX paths and the like
    host = str(address[0])
    if host in ("localhost", ""):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False  # a name we would have to resolve: not loopback by construction
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip in _box_addresses or any(ip in net for net in ALLOWED_NETWORKS)


@pytest.fixture(autouse=True)
def network_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _allowed(address):
            _violations.append(repr(address))
            raise ConnectionRefusedError(f"test network guard: connection to non-loopback {address!r} refused")

    def connect(self: socket.socket, address: object) -> None:
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


# `make test` runs the suite on pytest-xdist workers: most tests wait on processes, SSH and the emulator's rate
# limits more than they compute. Every module runs whole on one worker, in order (module fixtures stay valid), and
# modules that share something outside their tmp_path run on one worker, one after another: the loopback sshd logs
# in as this machine's user, so a runtime or server a test starts through it lives in the real home (~/csm-deploy,
# ~/.csm-deploy-run). Box-only vast tests on that sshd only read there, and the strict emulator's boxes each have a
# home of their own. The two network-namespace modules (each a whole provision with a server and a sweep) run one
# after the other too, to keep the 2-core machine's load down; their links are picked under a lock either way.
SHARED_LOOPBACK_HOME = {
    "test_autotune.py",
    "test_control_remote.py",
    "test_direct_access.py",
    "test_fleet_tunnel.py",
    "test_open_cmd.py",
    "test_ssh_provider.py",
    "test_teardown_ssh.py",
    "test_tunnel_cmd.py",
}
NETNS_BOXES = {"test_e2e_hub_tls.py", "test_e2e_provision.py"}


def worker_unit(nodeid: str) -> str:
    """What one xdist worker runs whole: a module, or the group of modules that share state."""
    module = Path(nodeid.split("::")[0]).name
    if module in NETNS_BOXES:
        return "netns"
    return "loopback-home" if module in SHARED_LOOPBACK_HOME else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """xdist's scope scheduler, scoped by `worker_unit` (its xdist_group marks cannot rename test ids on pytest 9)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_unit(nodeid)

    return ByUnit(config, log)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _violations:
        sys.stderr.write(f"\nnetwork guard: non-loopback connections attempted: {sorted(set(_violations))}\n")
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def deploy_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "deploy-home"
    monkeypatch.setenv("DEPLOY_HOME", str(home))
    try:
        from deploy.commands import options as _common

        _common.settings.cache_clear()
    except ImportError:
        pass
    return home


def require_binary(path: str, package: str) -> None:
    """A test that needs a Debian package fails with the one line that installs it (`make test` does, as root)."""
    if not (Path(path).exists() if "/" in path else shutil.which(path)):
        pytest.fail(f"{path} is missing: apt-get install -y {package} (make test installs it when run as root)")


@pytest.fixture
def haproxy() -> str:
    require_binary("/usr/sbin/haproxy", "haproxy")
    return "/usr/sbin/haproxy"


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests.fakes.sshd import start_sshd

    require_binary("/usr/sbin/sshd", "openssh-server")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def vast(sshd: object) -> Iterator[object]:
    """The vast.ai emulator (vast.ai itself cannot be reached here); its boxes are the real loopback sshd."""
    from tests.fakes.vast_emulator import VastEmulator

    emu = VastEmulator(ssh_host=sshd.host, ssh_port=sshd.port, authorized_keys=sshd.authorized_keys)
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def vast_image_boxes(sshd: object, tmp_path: Path) -> Iterator[object]:
    """The strict emulator whose boxes (each its own home and sshd) carry this checkout's venv as the image's
    /opt/venv; skipped where mount namespaces are not available."""
    from tests.fakes.vast import VastEmulator
    from tests.fakes.vast.boxes import namespaces_available, this_venv_as_image

    if reason := namespaces_available():
        pytest.skip(reason)
    emu = VastEmulator(ssh_host=sshd.host, box_root=tmp_path / "boxes", box_setup=this_venv_as_image(ROOT / ".venv"))
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def vast_env(vast: object, sshd: object, tmp_path: Path, deploy_home: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Environment for the real vastai CLI and `deploy`: emulator URL, key, private HOME/XDG dirs, fast polling.

    Also applied to this process (monkeypatch), so in-process calls see the same thing.
    """
    from tests.fakes.vast.client_env import vastai_env

    home = tmp_path / "home"
    env = {
        **vastai_env(vast, home),
        "DEPLOY_HOME": str(deploy_home),
        "DEPLOY_POLL_INTERVAL_S": "0.2",
        "DEPLOY_SSH_USER": sshd.user,
        "DEPLOY_READY_TIMEOUT_S": "30",
        "DEPLOY_SSH_TIMEOUT_S": "20",
        "DEPLOY_CHECK_COMMAND": "uname -sm",
        "DEPLOY_VAST_TIMEOUT_S": "30",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from deploy.commands import options as _common

    _common.settings.cache_clear()
    return {**os.environ, **env}


def run_deploy(args: list[str], env: dict, *, timeout: float = 120, input: str | None = None):  # noqa: A002
    """The real console script, as an operator runs it."""
    return subprocess.run(
        [str(DEPLOY_BIN), *args], env=env, capture_output=True, text=True, timeout=timeout, input=input
    )


def box_only(args: list[str]) -> list[str]:
    """`provision` limited to the box steps (rent, wait_running, connect, check) when the runtime steps exist:
    the control-plane scenarios test renting, not installing the runtime (which has its own tests)."""
    import inspect

    from deploy.commands.provision import provision_command

    takes_runtime = "runtime" in inspect.signature(provision_command).parameters
    if args[:1] == ["provision"] and takes_runtime and "--runtime" not in args:
        return [*args, "--no-runtime"]
    return args


@pytest.fixture
def deploy_cli(vast_env: dict):
    def run(*args: str, timeout: float = 120, env: dict | None = None):
        return run_deploy(box_only(list(args)), {**vast_env, **(env or {})}, timeout=timeout)

    return run


def unknown_running(vast: object, deploy_home: Path) -> set[str]:
    """Instances the emulator runs that the ledger has no open row for: must always be empty."""
    from deploy.ledger import Ledger

    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        known = {r.provider_id for r in ledger.open_rentals("vast")}
    return vast.running_ids() - known
