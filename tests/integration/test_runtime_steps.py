"""The runtime steps' decisions (mode, profile choice, install script, token, printout) as pure functions, and the
`local` provider's whole flow through the real console script (the demo's path: direct endpoint, teardown stops
the server). The remote flow over SSH is tests/e2e/test_e2e_provision.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import wave
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from deploy.costs.audio import audio_hours_per_hour, usd_per_audio_hour
from deploy.errors import UsageError
from deploy.ledger import Ledger
from deploy.ledger.records import ServerRecord
from deploy.providers import provider_class
from deploy.providers.records import SshHost
from deploy.provision.autotune import find_local_profile
from deploy.provision.driver import steps_for
from deploy.provision.layout import BoxLayout, install_script
from deploy.provision.options import ProvisionOptions, RuntimeOptions, is_runtime_image, resolve_mode
from deploy.provision.runtime_steps import profile_dirs
from deploy.provision.server import server_command
from deploy.provision.summary import summary, text
from deploy.secrets.tokens import new_rental_token
from deploy.settings import load_settings
from tests.conftest import DEPLOY_BIN


def _provider(name: str):
    return provider_class(name).from_settings(load_settings(), SshHost(host="203.0.113.7"))


@pytest.mark.parametrize(
    ("provider", "image", "mode"),
    [
        ("local", "anything", "current"),
        ("vast", "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime", "bootstrap"),
        ("vast", "ghcr.io/acme/csm-runtime:0.1.0", "image"),
        ("ssh", "registry.example:5000/team/csm-runtime@sha256:abc", "image"),
        ("vast", "ghcr.io/acme/csm-runtime-extras:1", "bootstrap"),
    ],
)
def test_auto_mode(provider, image, mode):
    assert resolve_mode("auto", provider=_provider(provider), image=image) == mode


def test_explicit_modes_and_bad_ones():
    assert resolve_mode("bootstrap", provider=_provider("local"), image="x") == "bootstrap"
    with pytest.raises(UsageError, match="only makes sense with --provider local"):
        resolve_mode("current", provider=_provider("vast"), image="x")
    with pytest.raises(UsageError, match="unknown runtime mode"):
        resolve_mode("docker", provider=_provider("vast"), image="x")
    assert is_runtime_image("csm-runtime:dev") and not is_runtime_image("pytorch/pytorch:2.6.0")


def test_options_from_the_command_line():
    vast = _provider("vast")
    stock = RuntimeOptions.resolve(vast, image="pytorch/pytorch:2.6.0-x", model="tiny-random")
    assert stock.system_site_packages and stock.autotune_quick and stock.autotune is None
    assert stock.port is None and stock.for_provider(vast).port == 8000
    local = RuntimeOptions.resolve(_provider("local"), image="x", model="tiny-random")
    assert local.for_provider(_provider("local")).port != 8000  # a free port each time: local replicas share a host
    real = RuntimeOptions.resolve(
        _provider("ssh"), image="ubuntu:22.04", autotune=False, autotune_args="--compile off --batches '1,2'"
    )
    assert real.model == "sesame/csm-1b" and not real.autotune_quick and not real.system_site_packages
    assert real.autotune is False and real.autotune_args == ("--compile", "off", "--batches", "1,2")
    with pytest.raises(UsageError, match="--server-port"):
        RuntimeOptions.resolve(vast, image="x", port=70000)


def test_options_round_trip_through_a_fleet_spec():
    options = ProvisionOptions(provider="vast", runtime=RuntimeOptions(model="tiny-random", autotune_args=("-q",)))
    assert ProvisionOptions.from_dict(options.as_dict()) == options


def test_install_script_reuses_the_venv_adds_the_prepared_dir_and_installs_pins_then_the_wheel():
    opts = RuntimeOptions(box_site_packages="/srv/prepared site", system_site_packages=True)
    script = install_script(BoxLayout("/root/csm-deploy", "bootstrap"), opts, "csm_deploy-0.1.0-py3-none-any.whl")
    lines = script.splitlines()
    assert lines[0] == "set -e"
    assert any("[ -x /root/csm-deploy/venv/bin/python ] ||" in ln and "--system-site-packages" in ln for ln in lines)
    pth = next(ln for ln in lines if ".pth" in ln)
    assert pth.startswith("echo '/srv/prepared site' > ")  # a plain path line: .pth files inside it do not run
    pins = next(i for i, ln in enumerate(lines) if "install -q -r /root/csm-deploy/runtime.txt" in ln)
    wheel = next(i for i, ln in enumerate(lines) if "--no-deps --force-reinstall" in ln)
    assert pins < wheel and "wheels/csm_deploy-0.1.0-py3-none-any.whl" in lines[wheel]
    # bash accepts it
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0


def _profile(path: Path, slug: str, model: str, rtf: float = 0.25, streams: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "schema_version": 1,
        "slug": slug,
        "identity": {"model": {"id": model}, "device": {"name": "NVIDIA GeForce RTX 4090"}},
        "chosen": {
            "candidate": f"bfloat16/default/graphs/b{streams}",
            "realtime": True,
            "settings": {"max_streams": streams},
            "measurement": {"rtf": rtf},
        },
    }
    path.write_text(yaml.safe_dump(data))
    return path


def local_profile(opts: RuntimeOptions, home: Path, slug: str) -> Path | None:
    return find_local_profile(profile_dirs(opts, home), slug, opts.model)


def test_a_profile_is_used_only_for_its_device_and_model_shape(tmp_path):
    repo, home = tmp_path / "profiles", tmp_path / "home"
    opts = RuntimeOptions(model="sesame/csm-1b", profiles_dir=str(repo))
    assert local_profile(opts, home, "rtx-4090") is None
    _profile(home / "profiles" / "rtx-4090.yaml", "rtx-4090", "csm-1b-random")  # a copy an earlier autotune kept
    assert local_profile(opts, home, "rtx-4090") == home / "profiles" / "rtx-4090.yaml"
    repo_file = _profile(repo / "rtx-4090.yaml", "rtx-4090", "sesame/csm-1b")
    assert local_profile(opts, home, "rtx-4090") == repo_file  # the project's own profiles/ win
    assert local_profile(RuntimeOptions(model="tiny-random", profiles_dir=str(repo)), home, "rtx-4090") is None
    assert local_profile(opts, home, "h100-sxm") is None
    (repo / "a10.yaml").write_text("schema_version: [unterminated")
    assert local_profile(opts, home, "a10") is None


def test_token_is_fresh_private_and_only_hashed(tmp_path):
    path, digest = new_rental_token(tmp_path, 7)
    token = path.read_text().strip()
    assert path.name == "rental-7.token" and len(token) >= 40
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert new_rental_token(tmp_path, 7)[0].read_text().strip() != token


def test_server_command_scrubs_the_api_key_and_names_the_token_file_not_the_token():
    opts = RuntimeOptions(model="tiny-random", port=8123)
    cmd = server_command(opts, BoxLayout("/root/csm-deploy", "bootstrap"), "/root/csm-deploy")
    assert cmd.startswith("cd /root/csm-deploy && exec env -u VAST_API_KEY CSM_PROFILES_DIR=/root/csm-deploy/profiles ")
    assert "/root/csm-deploy/venv/bin/csm-runtime serve --model tiny-random --host 127.0.0.1 --port 8123" in cmd
    assert "--token-file /root/csm-deploy/token --profile auto" in cmd


def test_cost_of_an_hour_of_audio():
    assert usd_per_audio_hour(0.40, audio_hours_per_hour(0.25, 4)) == pytest.approx(0.025)  # 16 audio h per box h
    assert usd_per_audio_hour(0.40, audio_hours_per_hour(2.0, 1)) == pytest.approx(0.80)
    assert usd_per_audio_hour(0.40, audio_hours_per_hour(None, 4)) is None
    profile = {
        "slug": "rtx-4090",
        "source": "pushed",
        "candidate": "bfloat16/default/graphs/b4",
        "rtf": 0.25,
        "max_streams": 4,
        "realtime": True,
    }
    meta = {
        "endpoint": "http://127.0.0.1:8000",
        "access": "ssh-tunnel",
        "token_file": "/h/tokens/rental-3.token",
        "model": "sesame/csm-1b",
        "runtime_mode": "bootstrap",
        "profile": profile,
    }
    rental = SimpleNamespace(
        id=3,
        provider="vast",
        provider_id="7000001",
        gpu_name="RTX 4090",
        rate_usd_h=0.40,
        server=ServerRecord.from_meta(meta),  # what the row's meta reads as
        watchdog=None,
        label="x",
        ssh_host=None,
        ssh_user=None,
        ssh_port=None,
        status="ready",
    )
    ctx = SimpleNamespace(check_output="", timings={"rent": 1.0}, runtime=RuntimeOptions(), profile=None)
    info = summary(rental, ctx)
    assert info["usd_per_audio_hour"] == pytest.approx(0.025) and info["timings_s"] == {"rent": 1.0}
    out = text(rental, info)
    assert "0.400 USD/h" in out and "/h/tokens/rental-3.token" in out and "$0.0250 per hour of audio" in out
    assert 'deploy generate 3 "Hello there."' in out and "SSH tunnel" in out


def test_runtime_steps_follow_check_only_when_a_runtime_is_asked_for():
    box_only = [s.name for s in steps_for(ProvisionOptions())]
    assert box_only == ["rent", "wait_running", "connect", "check"]
    names = [s.name for s in steps_for(ProvisionOptions(runtime=RuntimeOptions()))]
    assert names == [*box_only, "push", "install", "autotune", "start", "ready"]


@pytest.mark.slow
def test_local_provider_serves_generates_and_teardown_stops_the_server(deploy_home, tmp_path):
    """The demo's path, minus autotune: this machine, this interpreter's environment, a direct endpoint."""
    env = {**os.environ, "DEPLOY_HOME": str(deploy_home), "DEPLOY_POLL_INTERVAL_S": "0.3", "VAST_API_KEY": "sekrit-42"}
    run = lambda *a, timeout=300: subprocess.run(  # noqa: E731
        [str(DEPLOY_BIN), *a], env=env, capture_output=True, text=True, timeout=timeout
    )
    res = run("provision", "--provider", "local", "--model", "tiny-random", "--no-autotune", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["access"] == "direct" and out["runtime_mode"] == "current"
    # --no-autotune: an existing profile for this CPU (profiles/ may hold one) is pushed, else safe defaults
    assert out["profile"] is None or out["profile"]["source"] == "pushed"
    assert out["usd_per_audio_hour"] == (0.0 if out["profile"] else None)  # the local provider charges 0 USD/h
    with Ledger(deploy_home / "ledger.sqlite3") as ledger:
        (row,) = ledger.rentals()
    pid = row.meta["server_pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"sekrit-42" not in environ and b"VAST_API_KEY" not in environ  # scrubbed even on this machine
    wav = tmp_path / "local.wav"
    gen = run("generate", str(row.id), "Hi.", "-o", str(wav), "--max-audio-ms", "400")
    assert gen.returncode == 0, gen.stderr[-2000:]
    with wave.open(str(wav)) as w:
        assert w.getnframes() > 0 and w.getframerate() == 24_000
    down = run("teardown", str(row.id))
    assert down.returncode == 0, down.stderr
    _wait_gone(pid)
    gone = run("generate", str(row.id), "Hi.", "-o", str(wav))
    assert gone.returncode == 1 and "is destroyed" in gone.stderr


def _wait_gone(pid: int, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.2)
    raise AssertionError(f"server pid {pid} still runs after teardown ({sys.platform})")
