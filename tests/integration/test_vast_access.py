"""Getting at a vast box and at a large account: our SSH key while the instance loads, a direct SSH route that does
not answer, listings of more than one page under vast's rate limits, and a `deploy status` that says when it could
not ask. Each through the real console script and the real vastai CLI against the emulator (strict: vast as it is,
plus the option a test names); the first tests show the emulator's side through the bare CLI."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from tests.conftest import ROOT
from tests.fakes.ledger_view import ledger_rows as rows
from tests.fakes.sshd import keygen
from tests.fakes.vast import VastEmulator, crowd
from tests.fakes.vast.boxes import namespaces_available

VASTAI = ROOT / ".venv-vastai" / "bin" / "vastai"
SLOW_BOOT = {"null_status_s": 600.0, "running_after_s": 60.2}  # null for 10 min, then loading: `advance` moves on
BOOT_5S = {"null_status_s": 3.0, "running_after_s": 2.2}  # running 5 s after create: our attach comes before


@pytest.fixture
def vast(request, sshd, tmp_path):
    """conftest's emulator (strict, boxes of their own) plus the options a test passes by parametrize."""
    emu = VastEmulator(ssh_host=sshd.host, box_root=tmp_path / "boxes", **getattr(request, "param", {}))
    if emu.realism.boxes and (reason := namespaces_available()):
        pytest.skip(reason)
    emu.start()
    yield emu
    emu.stop()


def options(**kw):
    return pytest.mark.parametrize("vast", [kw], indirect=True, ids=["vast"])


def vastai(vast_env: dict, *args: str) -> tuple[object, str]:
    """The bare CLI, as an operator runs it: (parsed stdout or its text, stderr)."""
    proc = subprocess.run(
        [str(VASTAI), *args, "--raw"], env=vast_env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    try:
        return json.loads(proc.stdout), proc.stderr
    except ValueError:
        return proc.stdout, proc.stderr


def provision(deploy_cli, *args: str):
    res = deploy_cli("provision", "--gpu", "4090", "--json", "--max-offers", "1", *args)
    return res, (json.loads(res.stdout) if res.returncode == 0 else None)


def our_key(deploy_home) -> str:
    return " ".join((deploy_home / "id_ed25519.pub").read_text().split()[:2])


# --- the emulator, through the bare CLI ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vast", [{"attach_before_running": m, **SLOW_BOOT} for m in ("dropped", "refused")], indirect=True
)
def test_emulator_an_ssh_key_attached_before_the_instance_runs_never_reaches_it(vast, vast_env, tmp_path):
    key = keygen(tmp_path / "k")
    out, err = vastai(vast_env, "create", "instance", "1001", "--image", "img:1", "--ssh", "--direct")
    iid = out["new_contract"]
    answer, err = vastai(vast_env, "attach", "ssh", str(iid), key)
    if vast.realism.attach_before_running == "dropped":
        assert answer.strip() == "{'success': True}"  # accepted ...
    else:
        assert json.loads(err.splitlines()[-1])["status_code"] == 400
    vast.advance(700)
    assert vast.box(iid).authorized_keys.read_text() == ""  # ... and never applied
    assert vastai(vast_env, "attach", "ssh", str(iid), key)[0].strip() == "{'success': True}"
    assert key in vast.box(iid).authorized_keys.read_text()  # once it runs, it is


def test_emulator_pages_the_listing_25_at_a_time_and_the_clis_fetch_all_meets_the_rate_limit(vast, vast_env):
    ids = crowd.fill(vast, 60)
    out, err = vastai(vast_env, "show", "instances")  # page 2 comes back to back: 429, three quick retries
    assert out == "" and json.loads(err.splitlines()[-1]) == {"error": True, "status_code": 429, "msg": None}
    assert vast.limiter.refused.count("GET /api/v1/instances/") == 3

    vast.limiter.last.clear()  # the limit is per interval: start the next requests afresh
    first, _ = vastai(vast_env, "show", "instances", "--limit", "25")
    assert [r["id"] for r in first["instances"]] == ids[:25] and first["total_instances"] == 60
    assert first["next_token"].startswith("eyJ2YWx1ZXMi")  # opaque base64 JSON, as vast's
    vast.limiter.last.clear()
    second, _ = vastai(vast_env, "show", "instances", "--limit", "25", "--next-token", first["next_token"])
    assert [r["id"] for r in second["instances"]] == ids[25:50]
    vast.limiter.last.clear()
    only, _ = vastai(vast_env, "show", "instances", "--limit", "25", "--label", "someone-else:7")
    assert [r["id"] for r in only["instances"]] == [ids[7]] and only["next_token"] is None


@pytest.mark.parametrize("mode", ["silent", "closed"])
def test_emulator_a_direct_ssh_route_that_goes_nowhere_and_the_proxy_that_works(vast, vast_env, mode):
    vast.unreachable_direct_ssh(1001, mode)
    out, _ = vastai(vast_env, "create", "instance", "1001", "--image", "img:1", "--ssh", "--direct")
    vast.advance(10)
    row, _ = vastai(vast_env, "show", "instance", str(out["new_contract"]))
    direct = int(row["ports"]["22/tcp"][0]["HostPort"])
    with socket.socket() as s:
        s.settimeout(1.0)
        if mode == "silent":
            s.connect((row["public_ipaddr"], direct))  # TCP is accepted ...
            with pytest.raises(TimeoutError):
                s.recv(64)  # ... and nothing is ever said
        else:
            with pytest.raises(ConnectionRefusedError):
                s.connect((row["public_ipaddr"], direct))
    with socket.create_connection((row["ssh_host"], row["ssh_port"]), timeout=5) as s:
        assert s.recv(64).startswith(b"SSH-2.0-")  # the proxy reaches the box's sshd


# --- point 5: our key while the instance loads ------------------------------------------------------------------------


@options(attach_before_running="dropped", **BOOT_5S)
def test_a_key_attached_while_loading_is_attached_again_once_it_runs_and_the_onstart_installs_it(
    vast, deploy_cli, deploy_home
):
    res, out = provision(deploy_cli)
    assert res.returncode == 0, res.stderr[-2000:]
    iid = int(out["provider_id"])
    box, key = vast.box(iid), our_key(deploy_home)
    assert key in box.authorized_keys.read_text()  # vast's path: attached again once the instance ran
    assert vast.count("POST", rf"^/api/v0/instances/{iid}/ssh/$") == 2
    assert (box.home / ".ssh" / "authorized_keys").read_text().splitlines() == [key + " csm-deploy"]  # the onstart's
    (row,) = rows(deploy_home)
    assert row.meta["ssh_path"] == "direct"

    with vast.lock:  # the container restarts: the onstart runs again and adds nothing twice
        vast._set_state(vast.instances[iid], "stopped")
        vast._set_state(vast.instances[iid], "running")
    assert box.starts == 2 and box.wait_onstart() == 0
    assert (box.home / ".ssh" / "authorized_keys").read_text().splitlines() == [key + " csm-deploy"]


@options(attach_before_running="refused", **BOOT_5S)
def test_when_vast_never_takes_the_key_the_onstart_one_still_lets_ssh_in(vast, deploy_cli, deploy_home):
    vast.attach_fails(100)  # and once it runs, every attach answers success: false
    res, out = provision(deploy_cli)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "SSH relies on the key the onstart installs" in res.stderr
    assert vast.box(int(out["provider_id"])).authorized_keys.read_text() == ""  # vast never added it
    assert out["check"] and "Linux" in out["check"][0]


# --- point 6: a direct route that does not answer ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["silent", "closed"])
def test_a_direct_ssh_route_that_does_not_answer_falls_back_to_vasts_proxy(vast, deploy_cli, deploy_home, mode):
    vast.unreachable_direct_ssh(1001, mode)
    res, out = provision(deploy_cli)
    assert res.returncode == 0, res.stderr[-2000:]
    assert out["check"] and "Linux" in out["check"][0]
    (row,) = rows(deploy_home)
    proxy = vast.instances[int(row.provider_id)]["ssh_port"]
    assert (row.ssh_port, row.meta["ssh_path"]) == (proxy, "proxy")  # what later commands dial
    status = deploy_cli("status")
    assert status.returncode == 0, status.stderr[-2000:]
    assert f"127.0.0.1:{proxy} (proxy)" in status.stdout
    assert deploy_cli("teardown", str(row.id)).returncode == 0


# --- point 7: an account with many instances ---------------------------------------------------------------------------


def test_status_and_teardown_all_work_with_60_instances_in_the_account(vast, deploy_cli, deploy_home, vast_env):
    from deploy.providers.vastai_cli import VastCli

    others = crowd.fill(vast, 59)
    (ours,) = crowd.fill(vast, 1, label=lambda _i: "csm-deploy:lost:1")  # ours, in no ledger: an orphan
    status = deploy_cli("status", "--json")
    assert status.returncode == 0, status.stderr[-2000:]
    assert [(e["kind"], e["live"]["id"]) for e in json.loads(status.stdout)] == [("orphan", str(ours))]
    assert [b.id for b in VastCli().show_instances(label="csm-deploy:lost:1")] == [str(ours)]  # vast filters

    down = deploy_cli("teardown", "--all", "--yes")  # the destroy is confirmed against the whole listing
    assert down.returncode == 0, down.stderr[-2000:]
    assert vast.running_ids() == {str(i) for i in others}  # not ours: left alone
    assert [(r.provider_id, r.status) for r in rows(deploy_home)] == [(str(ours), "destroyed")]


# --- point 8: status says when it could not ask -----------------------------------------------------------------------


def test_status_exits_non_zero_when_a_provider_could_not_be_asked(vast, deploy_cli):
    vast.fail("GET", r"^/api/v1/instances/$", 500, times=-1)
    res = deploy_cli("status", "--json", env={"DEPLOY_VAST_RETRY_S": "2"})
    assert res.returncode == 1
    assert json.loads(res.stdout) == []  # what the ledger alone says, still printed
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: vast: listing failed") and "may be billing unseen" in last


@pytest.mark.parametrize("command", [["status"], ["teardown", "--all", "--yes"]])
def test_an_unknown_provider_is_one_line(vast, deploy_cli, command):
    res = deploy_cli(*command, "--provider", "nope")
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == ["Error: unknown provider 'nope'; known: vast, ssh, local"]
