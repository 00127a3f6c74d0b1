"""The emulator's strict behaviours (tests/fakes/vast/realism.py), each shown through the REAL vastai CLI 1.9.1:
what an operator's `vastai` prints when vast.ai is unkind. vast.ai itself is the one thing emulated; the boxes are
real sshds in private mount namespaces. Sources for each behaviour: docs/provisioning.md, "What the flow asks of
vast.ai"."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.fakes.sshd import keygen
from tests.fakes.vast import MANIFEST_UNKNOWN, OCI_FAILURE, Realism, VastEmulator, vastai_env
from tests.fakes.vast.boxes import namespaces_available
from tests.fakes.vast.realism import DOCUMENTED_RATE_LIMITS

VASTAI = ROOT / ".venv-vastai" / "bin" / "vastai"
QUIET = {"rate_limits": {}, "searches_per_minute": 0}  # strict, minus the pacing (for tests about something else)


@pytest.fixture
def vast(request, sshd, tmp_path):
    """Strict by default; `@pytest.mark.parametrize("vast", [{...}], indirect=True)` passes other options."""
    options = {"strict": True, **getattr(request, "param", {})}
    emu = VastEmulator(ssh_host=sshd.host, box_root=tmp_path / "boxes", **options)
    if emu.realism.boxes and (reason := namespaces_available()):
        pytest.skip(reason)
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def cli(vast, tmp_path):
    """Runs the real vastai CLI against the emulator: (exit code, parsed stdout or its text, stderr)."""
    home = tmp_path / "home"
    env = {
        "PATH": "/usr/bin:/bin",
        **vastai_env(vast, home),
    }

    def run(*args: str, raw: bool = True):
        proc = subprocess.run(
            [str(VASTAI), *args, *(["--raw"] if raw else [])],
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        try:
            out = json.loads(proc.stdout)
        except ValueError:
            out = proc.stdout
        return proc.returncode, out, proc.stderr

    return run


def cli_error(stderr: str) -> dict:
    """The JSON error object vastai --raw prints on stderr (its exit code stays 0)."""
    return json.loads([ln for ln in stderr.splitlines() if ln.startswith("{")][-1])


def create(cli, offer: int, *extra: str) -> int:
    code, out, err = cli("create", "instance", str(offer), "--image", "img:1", "--disk", "40", *extra)
    assert code == 0 and isinstance(out, dict) and out.get("success"), (out, err)
    return int(out["new_contract"])


def ssh(port: int, key: Path, command: str) -> subprocess.CompletedProcess:
    opts = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    argv = ["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes", *opts, "root@127.0.0.1", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


@pytest.fixture
def key(tmp_path) -> tuple[Path, str]:
    path = tmp_path / "id_ed25519"
    return path, keygen(path)


# --- (a) tmux auto-attach, onstart ---------------------------------------------------------------------------------


@pytest.mark.parametrize("vast", [QUIET], indirect=True)
def test_ssh_commands_run_only_once_onstart_made_no_auto_tmux(vast, cli, key):
    plain = create(cli, 1001, "--ssh", "--direct")
    fixed = create(cli, 1002, "--ssh", "--direct", "--onstart-cmd", "touch ~/.no_auto_tmux")
    vast.advance(10)  # both run: their sshds listen, the onstart ran in the box
    for iid in (plain, fixed):  # a key attached before the instance runs may never reach it (ssh_access.py)
        code, out, _ = cli("attach", "ssh", str(iid), key[1], raw=False)
        assert code == 0 and out.strip() == "{'success': True}"  # a Python repr, --raw or not
    assert vast.box(fixed).wait_onstart() == 0
    assert (vast.box(fixed).home / ".no_auto_tmux").exists() and not Path("/root/.no_auto_tmux").exists()

    res = ssh(vast.box(plain).port, key[0], "echo hi")
    assert (res.returncode, res.stdout) == (1, "")  # the command never ran
    assert res.stderr.splitlines() == ["no sessions", "open terminal failed: not a terminal"]
    assert ssh(vast.box(plain).port, key[0], "touch ~/.no_auto_tmux").returncode == 1  # SSH cannot fix it
    res = ssh(vast.box(fixed).port, key[0], "echo hi; echo $HOME")
    assert (res.returncode, res.stdout) == (0, "hi\n/root\n")


# --- (b) actual_status null while cur_state is running ---------------------------------------------------------


@pytest.mark.parametrize("vast", [{**QUIET, "null_status_s": 600, "running_after_s": 60.2}], indirect=True)
def test_actual_status_is_null_while_pulling_though_cur_state_says_running(vast, cli):
    iid = create(cli, 1001, "--ssh", "--direct")
    _, row, _ = cli("show", "instance", str(iid))
    assert row["actual_status"] is None and row["cur_state"] == "running" and row["intended_status"] == "running"
    assert row["ssh_port"] == vast.box(iid).port and vast.box(iid).sshd is None  # an endpoint nothing answers on
    vast.advance(600)
    _, row, _ = cli("show", "instance", str(iid))
    assert row["actual_status"] == "loading"
    vast.advance(60)
    _, row, _ = cli("show", "instance", str(iid))
    assert row["actual_status"] == "running" and vast.box(iid).sshd is not None


# --- (c) rate limits without Retry-After -----------------------------------------------------------------------


@pytest.mark.parametrize("vast", [{"rate_limits": {"GET /api/v0/instances/{id}/": 30.0}}], indirect=True)
def test_rapid_calls_get_429_without_retry_after_and_the_cli_gives_up_after_two_quick_retries(vast, cli):
    iid = create(cli, 1001, "--ssh", "--direct")
    request = urllib.request.Request(
        f"{vast.url}/api/v0/instances/{iid}/", headers={"Authorization": f"Bearer {vast.api_key}"}
    )
    with urllib.request.urlopen(request) as first:
        assert first.status == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 429 and refused.value.headers.get("Retry-After") is None
    assert json.loads(refused.value.read()) == {"detail": "API requests too frequent endpoint threshold=30"}

    code, out, err = cli("show", "instance", str(iid))
    assert code == 0 and out == ""  # exit 0 and nothing on stdout: the error is JSON on stderr
    assert cli_error(err) == {"error": True, "status_code": 429, "msg": None}  # `detail` is not `msg`
    assert vast.limiter.refused.count("GET /api/v0/instances/{id}/") == 1 + 3  # ours, then the CLI's 3 tries


def test_strict_rate_limits_are_the_documented_ones(vast):
    assert vast.limiter.intervals == DOCUMENTED_RATE_LIMITS and vast.limiter.searches_per_minute == 10


# --- (d) show instance after destroy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vast", [{**QUIET, "gone_after_destroy": g} for g in ("404", "null", "empty", "destroyed")], indirect=True
)
def test_show_instance_after_destroy(vast, cli):
    iid = create(cli, 1001, "--ssh", "--direct")
    assert cli("destroy", "instance", str(iid), "-y") == (0, "", "")  # -y --raw: silent on success
    code, out, err = cli("show", "instance", str(iid))
    shape = vast.realism.gone_after_destroy
    if shape == "404":
        assert code == 0 and cli_error(err)["status_code"] == 404
    elif shape == "null":
        assert code == 0 and out == {"instances": None}
    elif shape == "empty":
        assert code == 1 and "KeyError: 'start_date'" in err  # vastai itself crashes on `{"instances": {}}`
    else:
        assert code == 0 and out["intended_status"] == "destroyed" and out["cur_state"] == "unloaded"
    code, _, err = cli("destroy", "instance", str(iid), "-y")
    assert cli_error(err)["status_code"] == 404
    assert cli("show", "instances")[1] == []


# --- (e) cancel_unavail -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vast", [QUIET], indirect=True)
def test_failed_placement_leaves_a_stopped_instance_unless_cancel_unavail(vast, cli):
    vast.unplaceable(1001)
    vast.unplaceable(1002)
    code, out, err = cli("create", "instance", "1002", "--image", "img:1", "--cancel-unavail", "--ssh")
    assert out == "" and cli_error(err)["status_code"] == 410 and "no_such_ask" in cli_error(err)["msg"]
    assert vast.bodies("PUT", r"/asks/1002/")[0]["cancel_unavail"] is True

    iid = create(cli, 1001, "--ssh")  # what the CLI sends by default: cancel_unavail false
    assert vast.bodies("PUT", r"/asks/1001/")[0]["cancel_unavail"] is False
    vast.advance(3600)
    _, row, _ = cli("show", "instance", str(iid))
    assert (row["actual_status"], row["cur_state"], row["intended_status"]) == ("stopped", "stopped", "stopped")
    bill = vast.billing(iid)
    assert bill["gpu_usd"] == 0 and bill["disk_usd"] == pytest.approx(0.15 * 40 / 720, rel=0.01)


# --- (f) runtypes and port mappings -------------------------------------------------------------------------------


@pytest.mark.parametrize("vast", [QUIET], indirect=True)
def test_only_a_direct_runtype_on_an_offer_with_open_ports_maps_ports(vast, cli):
    closed = vast.add_offer(id=1005, direct_port_count=0)
    ports = ("--env", "-p 8000:8000")
    cases = {
        "ssh_proxy": create(cli, 1001, "--ssh", *ports),
        "ssh_direc ssh_proxy": create(cli, 1002, "--ssh", "--direct", *ports),
        "ssh": create(cli, 1003, "--direct", *ports),  # --direct alone keeps the CLI's default runtype "ssh"
        "no open ports": create(cli, closed, "--ssh", "--direct", *ports),
    }
    vast.advance(10)
    rows = {name: cli("show", "instance", str(iid))[1] for name, iid in cases.items()}
    assert [rows[n]["image_runtype"] for n in ("ssh_proxy", "ssh_direc ssh_proxy", "ssh")] == [
        "ssh_proxy",
        "ssh_direc ssh_proxy",
        "ssh",
    ]
    assert sorted(rows["ssh_direc ssh_proxy"]["ports"]) == ["22/tcp", "8000/tcp"]
    assert rows["ssh_proxy"]["ports"] == rows["ssh"]["ports"] == rows["no open ports"]["ports"] == {}
    assert all(r["actual_status"] == "running" and r["ssh_port"] for r in rows.values())  # SSH works either way


# --- (g) + (j) statuses that never reach running ------------------------------------------------------------------


@pytest.mark.parametrize("vast", [QUIET], indirect=True)
def test_error_status_msgs_and_unknown_never_reach_running(vast, cli):
    vast.fail_loading(1001, OCI_FAILURE, status="created")
    vast.fail_loading(1002, MANIFEST_UNKNOWN)
    vast.lose_heartbeat(1003)
    iids = [create(cli, offer, "--ssh", "--direct") for offer in (1001, 1002, 1003)]
    vast.advance(3600)
    rows = [cli("show", "instance", str(i))[1] for i in iids]
    assert [(r["actual_status"], r["cur_state"]) for r in rows] == [
        ("created", "running"),
        ("loading", "running"),
        ("unknown", "running"),
    ]
    assert ": OCI runtime create failed:" in rows[0]["status_msg"]  # what dstack matches
    assert "manifest unknown" in rows[1]["status_msg"]
    assert all(vast.billing(i)["gpu_usd"] == 0 for i in iids)


# --- (h) attach ssh answering success: false ---------------------------------------------------------------------


@pytest.mark.parametrize("vast", [QUIET], indirect=True)
def test_attach_ssh_failure_is_a_python_repr_on_stdout_with_exit_0(vast, cli, key):
    iid = create(cli, 1001, "--ssh", "--direct")
    vast.attach_fails(1)
    code, out, err = cli("attach", "ssh", str(iid), key[1])  # --raw makes no difference here
    assert (code, err) == (0, "")
    assert out.strip() == "{'success': False, 'error': 'ssh_key_error', 'msg': 'could not add the key to the instance'}"
    assert vast.box(iid).authorized_keys.read_text() == ""
    assert cli("attach", "ssh", str(iid), key[1])[1].strip() == "{'success': True}"
    assert key[1] in vast.box(iid).authorized_keys.read_text()


# --- (i) unknown search fields --------------------------------------------------------------------------------------


@pytest.mark.parametrize("vast", [QUIET], indirect=True)
def test_search_rejects_a_field_outside_vasts_table(vast, cli):
    code, out, err = cli("search", "offers", "gpu_name=RTX_4090 inet_down>=100 direct_port_count>=1", "-o", "dph")
    assert code == 0 and [o["id"] for o in out] == [1001, 1002, 1003, 1004]
    code, out, err = cli("search", "offers", "gpu_name=RTX_4090 inet_dwn>=100")
    assert "Warning: Unrecognized field: inet_dwn" in err  # the CLI only warns, and sends it anyway
    assert out == "" and cli_error(err)["status_code"] == 400 and "inet_dwn" in cli_error(err)["msg"]


# --- (k) faults around create and destroy -------------------------------------------------------------------------


@pytest.mark.parametrize("vast", [QUIET], indirect=True)
def test_create_can_succeed_at_vast_and_fail_for_the_client(vast, cli):
    vast.lose_create_response()
    code, out, err = cli("create", "instance", "1001", "--image", "img:1", "--label", "ours:a:1", "--ssh")
    assert out == "" and cli_error(err)["status_code"] == 500
    (row,) = cli("show", "instances")[1]  # ... yet it exists, bills, and carries our label
    assert row["label"] == "ours:a:1"

    vast.fail_after_create(2)
    iid = create(cli, 1002, "--ssh")
    assert cli_error(cli("show", "instance", str(iid))[2])["status_code"] == 500
    assert cli_error(cli("show", "instances")[2])["status_code"] == 500
    assert cli("show", "instance", str(iid))[1]["id"] == iid


@pytest.mark.parametrize("vast", [QUIET], indirect=True)
def test_outage_and_failing_destroys(vast, cli):
    iid = create(cli, 1001, "--ssh")
    vast.outage(60)
    assert cli_error(cli("show", "instances")[2])["status_code"] == 500
    assert cli_error(cli("destroy", "instance", str(iid), "-y")[2])["status_code"] == 500
    vast.advance(61)
    assert [r["id"] for r in cli("show", "instances")[1]] == [iid]

    vast.destroy_fails(times=2, status=429)  # the CLI retries a 429 twice: the third try goes through
    assert cli("destroy", "instance", str(iid), "-y") == (0, "", "")
    other = create(cli, 1002, "--ssh")
    vast.destroy_fails(times=-1, status=500)
    for _ in range(2):
        assert cli_error(cli("destroy", "instance", str(other), "-y")[2])["status_code"] == 500
    assert vast.running_ids() == {str(other)}


# --- (l) instance-scoped credentials --------------------------------------------------------------------------------


@pytest.mark.parametrize("vast", [QUIET], indirect=True)
def test_instance_key_reaches_onstart_and_manages_only_its_own_instance(vast, cli):
    save = 'env | grep -E "^(CONTAINER_ID|CONTAINER_API_KEY)=" > ~/.vast_env'
    code, out, _ = cli("create", "instance", "1001", "--image", "img:1", "--ssh", "--onstart-cmd", save)
    iid, instance_key = int(out["new_contract"]), out["instance_api_key"]
    other = create(cli, 1002, "--ssh")
    vast.advance(10)
    assert vast.box(iid).wait_onstart() == 0
    saved = dict(line.split("=", 1) for line in (vast.box(iid).home / ".vast_env").read_text().split())
    assert saved == {"CONTAINER_ID": str(iid), "CONTAINER_API_KEY": instance_key}

    as_box = ("--api-key", instance_key)
    assert cli("show", "instance", str(iid), *as_box)[1]["id"] == iid
    assert cli_error(cli("show", "instances", *as_box)[2])["status_code"] == 403
    assert cli_error(cli("destroy", "instance", str(other), "-y", *as_box)[2])["status_code"] == 403
    assert cli("destroy", "instance", str(iid), "-y", *as_box) == (0, "", "")
    assert vast.running_ids() == {str(other)}
    assert cli_error(cli("show", "instance", str(iid), *as_box)[2])["status_code"] == 401  # gone with its box


# --- (m) the billed lifetime ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("vast", [QUIET], indirect=True)
def test_gpu_bills_from_running_disk_from_create_and_charges_add_bandwidth(vast, cli):
    vast.stick_loading(1002)
    iid = create(cli, 1001, "--ssh", "--direct")
    never = create(cli, 1002, "--ssh", "--direct")
    vast.advance(3600)
    vast.transfer(iid, down_gb=20, up_gb=5)
    for i in (iid, never):
        cli("destroy", "instance", str(i), "-y")
    bill, idle = vast.billing(iid), vast.billing(never)
    assert bill["created_at"] < bill["running_at"] < bill["destroyed_at"]
    assert bill["gpu_hours"] == pytest.approx(1.0, abs=0.01) and bill["disk_hours"] > bill["gpu_hours"]
    assert bill["bandwidth_usd"] == pytest.approx(20 * 0.005 + 5 * 0.01)
    assert idle["running_at"] is None and idle["gpu_usd"] == 0 and idle["disk_usd"] > 0

    start, end = int(bill["created_at"]) - 60, int(vast.now()) + 60
    _, page, _ = cli("show", "invoices-v1", "--charges", "-s", str(start), "-e", str(end), "-l", "100")
    rows = {r["source"]: r for r in page["results"]}
    row = rows[f"instance-{iid}"]
    assert row["amount"] == pytest.approx(bill["total_usd"], abs=1e-6)
    assert [i["type"] for i in row["items"]] == ["gpu", "disk", "bwd", "bwu"]
    assert rows[f"instance-{never}"]["amount"] == pytest.approx(idle["disk_usd"], abs=1e-6)


# --- the switch -----------------------------------------------------------------------------------------------------


def test_strict_turns_every_realistic_behaviour_on_and_explicit_options_win():
    kind, strict = Realism(), Realism.strict()
    # The User-Agent edge is a possibility vast's docs do not state, so strict leaves it off; tests ask for it.
    on_request = {"user_agent_edge"}
    assert all(getattr(kind, f) != getattr(strict, f) for f in kind.__dataclass_fields__ if f not in on_request)
    assert not strict.user_agent_edge and Realism().with_options(user_agent_edge=True).user_agent_edge
    emu = VastEmulator(strict=True, auto_tmux=False, gone_after_destroy="null")
    assert emu.realism.boxes and not emu.realism.auto_tmux and emu.realism.gone_after_destroy == "null"
    assert Realism().with_options(auto_tmux=True).boxes  # tmux needs a box to live in
    with pytest.raises(TypeError, match="unknown emulator options"):
        Realism().with_options(stritc=True)
    emu.stop()  # never started: only its box directory to remove
