"""End to end on a box you already have: `deploy provision --provider ssh` against a real sshd on this machine, then
`deploy generate`, `deploy status` and `deploy teardown`, each as the operator runs it (the real console script).

The box is this machine's loopback sshd (tests/fakes/sshd.py) run in a mount namespace whose /root is a directory of
the test's own, so the runtime's venv, its server log and pid file land in a fresh home, as on a box someone lent
you, and never in this machine's /root. Nothing is emulated: the wheel is built, pushed and installed into a venv
there; the box has no route to PyPI, so it gets this checkout's site-packages as its prepared environment
(`--box-site-packages`, as tests/e2e/test_e2e_provision.py does) and `pip install -r` finds every pin met.

An ssh box is not ours to destroy: teardown stops the server provision started there and releases the ledger row.
Runs as root (a mount namespace); elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import wave
from pathlib import Path

import pytest

from deploy.ledger import Ledger
from deploy.provision.box_steps import ensure_ssh_key
from deploy.remote.host import free_port
from deploy.settings import load_settings
from tests.conftest import ROOT, require_binary
from tests.fakes.ssh_rental import running, stop_group, wait_gone

pytestmark = pytest.mark.slow
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _home_prefix(home: Path) -> list[str]:
    """Run sshd with `home` mounted over /root, keeping the parts of /root this machine's Python lives in."""
    keep = {Path(p).parts[2] for p in (BASE_PYTHON, SITE_PACKAGES, str(ROOT)) if Path(p).parts[:2] == ("/", "root")}
    lines = ["set -e"]
    for name in sorted(keep):
        lines += [f"mkdir -p {home}/{name}", f"mount --bind /root/{name} {home}/{name}"]
    lines += [f"mount --rbind {home} /root", 'exec "$@"']
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "; ".join(lines), "box"]


@pytest.fixture(scope="module")
def box_home(tmp_path_factory) -> Path:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("the ssh box needs a mount namespace of its own: run as root with util-linux's unshare")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"the ssh box needs a mount namespace of its own: {probe.stderr.strip()}")
    return tmp_path_factory.mktemp("box-home")


@pytest.fixture(scope="module")
def sshd(box_home, tmp_path_factory):
    """Overrides conftest's loopback sshd: the same server, on 127.0.0.1, but its logins get `box_home` as /root."""
    from tests.fakes.sshd import start_sshd

    require_binary("/usr/sbin/sshd", "openssh-server")
    server = start_sshd(tmp_path_factory.mktemp("box-sshd"), prefix=_home_prefix(box_home), env={"HF_HUB_OFFLINE": "1"})
    yield server
    server.stop()


def _rows(home: Path):
    with Ledger(home / "ledger.sqlite3") as ledger:
        return ledger.rentals()


def test_provision_generate_status_teardown_on_an_ssh_box(deploy_cli, sshd, box_home, deploy_home, tmp_path):
    # The operator's side of "a box you have": deploy's key is authorized there beforehand.
    pub = ensure_ssh_key(load_settings())
    with open(sshd.authorized_keys, "a") as f:
        f.write(pub.strip() + "\n")
    server_port = free_port()
    args = ["provision", "--provider", "ssh", "--host", sshd.host, "--port", str(sshd.port), "--user", sshd.user]
    args += ["--runtime", "--model", "tiny-random", "--no-autotune", "--server-port", str(server_port)]
    args += ["--box-python", BASE_PYTHON, "--box-site-packages", SITE_PACKAGES, "--runtime-timeout", "300", "--json"]
    res = deploy_cli(*args, timeout=540)
    (row,) = _rows(deploy_home)
    server_pid = row.meta.get("server_pid")
    try:
        assert res.returncode == 0, res.stderr[-3000:]
        out = json.loads(res.stdout)
        assert out["status"] == "ready" and out["provider"] == "ssh" and out["runtime_mode"] == "bootstrap"
        assert out["access"] == "ssh-tunnel" and out["watchdog"] is None  # loopback only; nothing here can self-destroy
        assert row.provider_id == f"{sshd.user}@{sshd.host}:{sshd.port}" and row.is_open
        assert row.host_key == sshd.host_key_pub  # pinned on first use
        steps = ["rent", "wait_running", "connect", "check", "push", "install", "autotune", "start", "ready"]
        assert set(out["timings_s"]) == set(steps)
        print("step timings (s):", ", ".join(f"{s} {out['timings_s'][s]}" for s in steps))

        # the runtime went into a venv in the box's own home, and the server runs from it
        venv_app = list((box_home / "csm-deploy" / "venv").glob("lib/python3*/site-packages/csm_runtime/server/app.py"))
        assert venv_app, "the wheel's csm_runtime is not in the box's venv"
        assert running(server_pid)
        assert (box_home / ".csm-deploy-run" / "csm-runtime.pid").read_text().strip() == str(server_pid)
        cmdline = Path(f"/proc/{server_pid}/cmdline").read_bytes().split(b"\0")
        assert b"serve" in cmdline and str(server_port).encode() in cmdline

        wav_path = tmp_path / "ssh.wav"
        gen = deploy_cli("generate", str(row.id), "Hello over SSH.", "-o", str(wav_path), "--max-audio-ms", "400",
                         "--json", timeout=300)  # fmt: skip
        assert gen.returncode == 0, gen.stderr[-2000:]
        assert json.loads(gen.stdout)["audio_s"] > 0
        with wave.open(str(wav_path)) as w:
            assert w.getframerate() == 24_000 and w.getnframes() >= 1920

        status = deploy_cli("status", "--json", timeout=120)
        assert status.returncode == 0, status.stderr[-2000:]
        (listed,) = [e for e in json.loads(status.stdout) if e["rental"] and e["rental"]["id"] == row.id]
        assert listed["provider"] == "ssh" and listed["rental"]["status"] == "ready"

        down = deploy_cli("teardown", str(row.id), "--json", timeout=120)
        assert down.returncode == 0, down.stderr[-2000:]
        (closed,) = json.loads(down.stdout)["closed"]
        assert closed["status"] == "released" and closed["server"] == f"pid {server_pid} stopped"
        assert wait_gone(server_pid, 10), "the server still runs on the box after teardown"
        assert not (box_home / ".csm-deploy-run" / "csm-runtime.pid").exists()
        (after,) = _rows(deploy_home)
        assert after.status == "released" and not after.is_open and after.ended_at is not None
    finally:
        if server_pid and running(server_pid):
            stop_group(server_pid)
