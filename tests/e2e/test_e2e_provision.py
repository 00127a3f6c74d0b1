"""End to end: `deploy provision --gpu 4090 --model tiny-random` through every step, for real, on a box of our own.

The one thing emulated is vast.ai (tests/fakes/vast/, driven by the real vastai CLI), strict: vast as it is, with
its tmux hook on SSH sessions, a null status and a slow pull before `running`, per-endpoint rate limits, 404 after a
destroy and instance-scoped keys. The box it "rents" lives in a network namespace with its own address
(tests/fakes/netns_box.py): each instance gets its own sshd there and its own home directory (a bind mount over
/root in a mount namespace), and the create's onstart runs in it, so the toolkit reaches it only over SSH, as a rented
machine. The project wheel is really built, pushed (sha256-checked) and installed into a venv on the box; the box has
no network, so it is handed this checkout's site-packages as a prepared environment (`--box-site-packages`) for the
heavy pins. Destroying the instance ends everything that ran in the box, as destroying a container does.

Runs as root (network and mount namespaces); elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.ledger import Ledger
from tests.conftest import ROOT, unknown_running
from tests.fakes.ledger_view import ledger_rows as rows
from tests.fakes.netns_box import NetnsBox, box_for_module, files_containing, kill_box_processes
from tests.fakes.ssh_rental import running  # alive and not a zombie: a killed orphan stays in /proc until reaped
from tests.fakes.vast import VastEmulator
from tests.fakes.vast.boxes import BoxSetup, keep_for_this_python
from tests.fakes.vast.relay import api_inside

pytestmark = pytest.mark.slow
SITE_PACKAGES = sysconfig.get_paths()["purelib"]  # this checkout's .venv: the box's "prepared" environment
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
# A cheap but real sweep: one setting, one batch, few frames (the box is a shared 2-core CPU). No delivery check: a
# 2-frame measurement on a loaded CPU is no prediction to hold the served setting to (its own tests cover it).
AUTOTUNE_ARGS = "--compile off --batches 1 --timed-frames 2 --warmup-frames 1 --no-check"


@pytest.fixture(scope="module")
def box() -> Iterator[NetnsBox]:
    with box_for_module() as box:
        yield box


@pytest.fixture
def vast(box, tmp_path):
    """The strict emulator whose boxes live in the namespace: each instance its own sshd on the box's address, its
    own home over /root, its onstart run there. The box has no network, and says so (HF_HUB_OFFLINE): the Hugging Face
    hub then fails at once instead of retrying DNS."""
    setup = BoxSetup(
        prefix=tuple(box.exec_prefix()),
        listen=box.box_addr,
        keep_under_root=keep_for_this_python(),
        session_env={"HF_HUB_OFFLINE": "1"},
    )
    emu = VastEmulator(
        same_host_port=True,  # public_ipaddr = the box's address (ssh_host), the mapped port = the server's port
        ssh_host=box.box_addr,
        box_root=tmp_path / "boxes",
        box_setup=setup,
        null_status_s=3.0,  # a slow pull: null for 3 s, then loading, `running` about 9 s after create
        running_after_s=6.0,
    )
    emu.start()
    with api_inside(box, emu.url):  # the box's watchdog arms by asking vast about its instance (VAST_URL)
        yield emu
    emu.stop()
    kill_box_processes(box, keep=set())


def provision_args(model: str, *extra: str) -> list[str]:
    return [
        "provision",
        "--runtime",
        "--gpu",
        "4090",
        "--model",
        model,
        "--box-python",
        BASE_PYTHON,
        "--box-site-packages",
        SITE_PACKAGES,
        "--runtime-timeout",
        "300",
        *extra,
    ]


def events(home: Path, rid: int) -> list[tuple[str, str | None]]:
    with Ledger(home / "ledger.sqlite3") as ledger:
        return [
            (r["kind"], r["detail"])
            for r in ledger.db.execute("SELECT kind, detail FROM events WHERE rental_id=?", (rid,))
        ]


def test_provision_generate_teardown_cost_on_a_rented_box(deploy_cli, vast, box, deploy_home, tmp_path):
    res = deploy_cli(
        *provision_args("tiny-random", "--autotune", "--autotune-args", AUTOTUNE_ARGS, "--json"), timeout=540
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["status"] == "ready" and out["provider"] == "vast" and out["rate_usd_h"] == 0.35
    # the server's port was mapped (`-p 8000:8000`), so the server binds 0.0.0.0, serves TLS with a certificate
    # pinned here, and any client that trusts that certificate reaches it directly
    assert out["access"] == "direct" and out["endpoint"] == f"https://{box.box_addr}:8000"
    assert Path(out["tls_cert"]).is_file() and len(out["tls_cert_sha256"]) == 64
    iid = int(out["provider_id"])
    box_home = vast.box(iid).home
    assert vast.instances[iid]["ports"] == {
        "8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"}],
        "22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(vast.box(iid).port)}],  # `--ssh --direct`: SSH to the box
    }
    # vast's tmux hook is off (the onstart's ~/.no_auto_tmux), and the box's watchdog found the instance key the
    # onstart saved (0600)
    assert (box_home / ".no_auto_tmux").exists()
    assert (box_home / ".csm-deploy-instance.env").stat().st_mode & 0o777 == 0o600
    assert out["model"] == "tiny-random" and out["runtime_mode"] == "bootstrap"
    steps = ["rent", "wait_running", "connect", "check", "push", "install", "autotune", "start", "ready"]
    assert set(out["timings_s"]) == set(steps)  # every step ran and was timed (JSON keys come sorted)
    print("step timings (s):", ", ".join(f"{s} {out['timings_s'][s]}" for s in steps))
    # autotune really ran on the box, and a copy of its profile came back
    profile = out["profile"]
    assert profile["source"] == "autotuned" and profile["rtf"] > 0 and profile["max_streams"] == 1
    assert Path(profile["path"]).is_file() and Path(profile["path"]).parent == deploy_home / "profiles"
    assert out["usd_per_audio_hour"] == pytest.approx(0.35 * profile["rtf"])

    # the wheel really went into a venv on the box, beside the lock file and the prepared-environment .pth
    box_dir = box_home / "csm-deploy"
    installed = list((box_dir / "venv").glob("lib/python3*/site-packages/csm_runtime/server/app.py"))
    assert installed, "the wheel's csm_runtime is not in the box's venv"
    assert list((box_dir / "venv").glob("lib/python3*/site-packages/csm-deploy-prepared.pth"))
    assert (box_dir / "runtime.txt").read_bytes() == (ROOT / "requirements" / "runtime.txt").read_bytes()
    (row,) = rows(deploy_home)
    kinds = dict(events(deploy_home, row.id))
    assert "sha256 checked" in kinds["push"] and ".whl" in kinds["push"]
    assert "installed csm_deploy-" in kinds["install"]
    assert row.meta["watchdog"]["running"] and "watchdog" in kinds

    # the token: fresh, 0600 on both sides, only its hash in the ledger
    token_file = Path(out["token_file"])
    token = token_file.read_text().strip()
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert (box_dir / "token").stat().st_mode & 0o777 == 0o600
    assert (box_dir / "token").read_text().strip() == token
    assert row.meta["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    ledger_bytes = b"".join(p.read_bytes() for p in deploy_home.glob("ledger.sqlite3*"))
    assert token.encode() not in ledger_bytes

    # the vast API key never reaches the box: not in its files, not in the server's environment
    assert files_containing(box_home, vast.api_key.encode()) == []
    server_pid = row.meta["server_pid"]
    assert vast.api_key.encode() not in Path(f"/proc/{server_pid}/environ").read_bytes()
    assert b"VAST_API_KEY" not in Path(f"/proc/{server_pid}/environ").read_bytes()

    # an HTTP client needs nothing but the URL, the token and the pinned certificate
    import ssl

    import httpx

    pinned = ssl.create_default_context(cafile=out["tls_cert"])
    assert httpx.get(out["endpoint"] + "/health", timeout=10, verify=pinned).status_code == 200
    assert httpx.get(out["endpoint"] + "/ready", timeout=10, verify=pinned).status_code == 401
    auth = {"Authorization": f"Bearer {token}"}
    ready = httpx.get(out["endpoint"] + "/ready", headers=auth, timeout=10, verify=pinned)
    assert ready.status_code == 200

    # generate through the endpoint the ledger recorded
    wav_path = tmp_path / "box.wav"
    gen = deploy_cli("generate", str(row.id), "Hello from the box.", "-o", str(wav_path), "--max-audio-ms", "800",
                     "--json", timeout=300)  # fmt: skip
    assert gen.returncode == 0, gen.stderr[-2000:]
    with wave.open(str(wav_path)) as w:
        assert w.getframerate() == 24_000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        assert w.getnframes() >= 1920  # at least one 80 ms frame of audio
    assert json.loads(gen.stdout)["audio_s"] > 0

    # teardown destroys the instance (and with it the server), cost shows it at the emulator's rate
    down = deploy_cli("teardown", str(row.id))
    assert down.returncode == 0, down.stderr
    assert vast.running_ids() == set()
    assert not running(server_pid)
    cost = deploy_cli("cost", "--json")
    assert cost.returncode == 0, cost.stderr
    (line,) = json.loads(cost.stdout)["lines"]
    assert line["rate_usd_h"] == 0.35 and line["usd"] > 0 and not line["open"]
    assert unknown_running(vast, deploy_home) == set()


def test_server_that_fails_to_start_shows_its_log_and_the_box_is_destroyed(deploy_cli, vast, deploy_home):
    res = deploy_cli(*provision_args("no-such-model", "--no-autotune", "--max-offers", "1"), timeout=400)
    assert res.returncode == 1, res.stdout
    assert "last 30 lines of ~/.csm-deploy-run/csm-runtime.log" in res.stderr
    log_tail = res.stderr.split("last 30 lines", 1)[1].split("--- end of log ---", 1)[0]
    assert "ModelLoadError: cannot load model 'no-such-model'" in log_tail  # the server's own words, from its log
    assert '"GET /ready' not in log_tail  # our polls are filtered out of the tail
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: step 'ready' failed: the server could not load no-such-model: ModelLoadError")
    (row,) = rows(deploy_home)
    assert row.status == "destroyed" and row.ended_at is not None
    assert row.reason.startswith("provision failed at ready: the server could not load no-such-model")
    assert vast.instances[int(row.provider_id)]["_destroyed_at"] is not None
    assert vast.running_ids() == set()
    assert unknown_running(vast, deploy_home) == set()
