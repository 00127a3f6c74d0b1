"""The watchdog's own calls to vast (csm_runtime/watchdog_vast.py), made for real against a bare emulator: no SSH, no
provision, no box. The arming GET and the destroy DELETE go to the key's own instance, with the instance key and the
watchdog's own User-Agent; an edge in front of vast that refuses urllib's default User-Agent (Cloudflare's error
1010) lets them through, and lets the vastai CLI through; refused and failed destroys are retried until one lands.

vast.ai cannot be reached from here: tests/fakes/vast stands in for it.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from csm_runtime import watchdog_vast
from csm_runtime.watchdog import Limits, Observation, Settings, run
from csm_runtime.watchdog_vast import USER_AGENT, InstanceKey, Refused, destroy_instance, verify_instance
from tests.conftest import ROOT
from tests.fakes.vast import VastEmulator, vastai_env

VASTAI = ROOT / ".venv-vastai" / "bin" / "vastai"


@pytest.fixture
def vast():
    """Instance keys on, the User-Agent edge in front; nothing else that would slow a test (no boxes, no pacing)."""
    emu = VastEmulator(strict=False, instance_keys=True, user_agent_edge=True)
    emu.start()
    yield emu
    emu.stop()


def rented(vast: VastEmulator, offer: int = 1001) -> InstanceKey:
    iid = vast.create_direct(offer, "csm-deploy:test:1")
    return InstanceKey(str(iid), vast.instances[iid]["_api_key"])


def test_the_destroy_is_a_delete_of_its_own_instance_with_its_key_and_its_user_agent(vast):
    key = rented(vast)
    other = rented(vast, 1002)
    assert USER_AGENT == "csm-runtime/0.1.0"
    with pytest.raises(Refused, match="403"):
        destroy_instance(vast.url, InstanceKey(other.instance_id, key.api_key))  # not its instance
    destroy_instance(vast.url, key)
    assert vast.running_ids() == {other.instance_id}  # that one instance, nothing else
    path = f"/api/v0/instances/{key.instance_id}/"
    assert vast.agents[-1] == ("DELETE", path, USER_AGENT, key.api_key)
    assert all(a[2] == USER_AGENT for a in vast.agents)
    with pytest.raises(Refused, match="401"):  # the key ended with its instance (the box stops with it)
        destroy_instance(vast.url, key)


def test_the_edge_refuses_urllibs_default_agent_which_the_watchdog_no_longer_sends(vast, monkeypatch):
    key = rented(vast)
    plain = urllib.request.Request(
        f"{vast.url}/api/v0/instances/{key.instance_id}/", headers={"Authorization": f"Bearer {key.api_key}"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(plain)
    assert refused.value.code == 403 and refused.value.read() == b"error code: 1010"
    assert verify_instance(vast.url, key)["id"] == int(key.instance_id)  # the watchdog's own agent passes
    monkeypatch.setattr(watchdog_vast, "USER_AGENT", "Python-urllib/3.11")  # what it sent before
    with pytest.raises(Refused, match="HTTP 403: error code: 1010"):
        destroy_instance(vast.url, key)
    assert key.instance_id in vast.running_ids()


def test_arming_proves_the_key_on_its_own_instance(vast):
    key = rented(vast)
    assert verify_instance(vast.url, key)["id"] == int(key.instance_id)
    assert vast.agents[-1] == ("GET", f"/api/v0/instances/{key.instance_id}/", USER_AGENT, key.api_key)
    with pytest.raises(Refused, match="HTTP 401: Invalid user key"):
        verify_instance(vast.url, InstanceKey(key.instance_id, "not-the-key"))
    other = rented(vast, 1002)
    with pytest.raises(Refused, match="HTTP 403"):
        verify_instance(vast.url, InstanceKey(other.instance_id, key.api_key))
    destroy_instance(vast.url, key)
    with pytest.raises(Refused):  # a destroyed instance's key is dead: nothing to arm for
        verify_instance(vast.url, key)


def test_a_refused_then_failed_destroy_is_tried_again_and_each_error_is_in_the_state(vast, tmp_path):
    key = rented(vast)
    path = f"^/api/v0/instances/{key.instance_id}/$"
    vast.fail("DELETE", path, 403, msg="error code: 1010")
    vast.fail("DELETE", path, 503)
    state = tmp_path / "watchdog.json"
    errors: list[str | None] = []

    def sleep(seconds: float) -> None:  # no real waiting: what the state said before each wait
        errors.append(json.loads(state.read_text())["last_error"])

    settings = Settings("http://127.0.0.1:1", "tok", Limits(max_hours=1, started_at=0), api=vast.url, state_file=state)
    reason = run(settings, key, poll=lambda: Observation(False), sleep=sleep)
    assert "its cap is 1 h" in reason and key.instance_id not in vast.running_ids()
    deletes = [a for a in vast.agents if a[0] == "DELETE"]
    assert deletes == [("DELETE", f"/api/v0/instances/{key.instance_id}/", USER_AGENT, key.api_key)] * 3
    assert errors[-2].startswith("destroy refused (try 1): HTTP 403") and "error code: 1010" in errors[-2]
    assert errors[-1].startswith("destroy failed (try 2): HTTP 503")
    final = json.loads(state.read_text())
    assert final["armed"] and final["action"] == "destroyed" and final["destroy_tries"] == 3


def test_the_vastai_cli_passes_the_edge(vast, tmp_path):
    """The edge must not stand in the way of the control plane: vastai 1.9.1 sends `vastai-cli/1.9.1` (and
    requests' default agent for the GPU names it fetches at import)."""
    rented(vast)
    home = tmp_path / "home"
    env = {
        "PATH": "/usr/bin:/bin",
        **vastai_env(vast, home),
    }
    proc = subprocess.run(
        [str(VASTAI), "show", "instances", "--raw"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 1, proc.stderr[-1000:]
    agents = {a[2].split("/")[0] for a in vast.agents}
    assert "vastai-cli" in agents and not any(a[0] == "GET" and "1010" in a[2] for a in vast.agents)


def test_the_command_exits_3_with_one_line_when_vast_refuses_its_key_and_arms_when_vast_takes_it(vast, tmp_path):
    """`csm-runtime watchdog` as the box runs it (its environment holding vast's instance variables)."""
    key = rented(vast)
    (tmp_path / "token").write_text("tok\n")
    state = tmp_path / "watchdog.json"
    args = [str(ROOT / ".venv" / "bin" / "csm-runtime"), "watchdog", "--server", "http://127.0.0.1:1"]
    args += ["--token-file", str(tmp_path / "token"), "--state-file", str(state), "--max-hours", "8"]
    args += ["--api-url", vast.url]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CONTAINER_ID": key.instance_id}

    refused = subprocess.run(
        args, env={**env, "CONTAINER_API_KEY": "revoked"}, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 3
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error")]
    assert errors == [
        "Error: not armed: vast refused the instance key: HTTP 401: Invalid user key; the box cannot destroy itself"
    ]
    written = json.loads(state.read_text())
    assert written["action"] == "refused" and not written["armed"] and "HTTP 401" in written["last_error"]

    armed = subprocess.Popen(args, env={**env, "CONTAINER_API_KEY": key.api_key}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (state.exists() and json.loads(state.read_text()).get("armed")):
            assert armed.poll() is None and time.monotonic() < deadline, armed.stderr.read()
            time.sleep(0.1)
    finally:
        armed.kill()
        armed.wait()
    assert json.loads(state.read_text())["action"] == "watching" and key.instance_id in vast.running_ids()
