"""The watchdog's decisions (idle, a dead server, the hours and spend caps), what it reads from /metrics, where it
finds vast's instance-scoped key, and the loop's state file. The real calls to vast (arm, destroy) against the
emulator are in tests/integration/test_watchdog_vast_calls.py; the process on a box that `deploy provision` starts is
in tests/integration/test_vast_watchdog.py."""

from __future__ import annotations

import json

import pytest

from csm_runtime.watchdog import (
    START_GRACE_S,
    InstanceKey,
    Limits,
    Observation,
    Refused,
    Settings,
    Unanswered,
    Watch,
    WatchdogError,
    environ_of_file,
    instance_key,
    parse_activity,
    run,
)

IDLE = Observation(True, last_request=None)


def test_idle_counts_from_the_last_request_and_busy_streams_are_activity():
    watch = Watch(Limits(idle_s=60, started_at=0), since=1000)
    assert watch.observe(IDLE, 1059) is None
    assert "no request for 60 s" in watch.observe(IDLE, 1060)
    watch = Watch(Limits(idle_s=60, started_at=0), since=1000)
    assert watch.observe(Observation(True, last_request=1050), 1100) is None  # a request 50 s ago
    assert watch.observe(Observation(True, last_request=1050, busy=True), 1200) is None  # a stream runs
    assert watch.observe(IDLE, 1259) is None and watch.observe(IDLE, 1260) is not None


def test_a_loading_server_is_not_idle_and_the_idle_clock_starts_when_it_first_answers():
    """A 30 s idle limit against a server that takes 200 s to load on a busy box: the box is kept until it serves,
    then idle counts from that first answer; a server that never answers is given START_GRACE_S."""
    watch = Watch(Limits(idle_s=30, started_at=0), since=0)
    assert watch.observe(Observation(False), 0) is None  # loading: /metrics does not answer yet
    assert watch.observe(Observation(False), 199) is None
    assert watch.observe(IDLE, 200) is None  # loaded
    assert watch.observe(IDLE, 229) is None and "no request for 30 s" in watch.observe(IDLE, 230)
    never = Watch(Limits(idle_s=30, started_at=0), since=0)
    assert never.observe(Observation(False), START_GRACE_S - 1) is None
    assert "never answered" in never.observe(Observation(False), START_GRACE_S)


def test_a_dead_server_is_idle_after_the_same_time_even_with_recent_requests():
    watch = Watch(Limits(idle_s=30, started_at=0), since=0)
    assert watch.observe(Observation(True, last_request=100, busy=True), 100) is None
    assert watch.observe(Observation(False), 101) is None  # kill -9: /metrics stops answering
    assert watch.observe(Observation(False), 130) is None
    assert "has not answered for 30 s" in watch.observe(Observation(False), 131)
    watch = Watch(Limits(idle_s=30, started_at=0), since=0)
    watch.observe(Observation(False), 10)
    assert watch.observe(Observation(True, last_request=35, busy=True), 35) is None  # back: the clock restarts


def test_hours_and_spend_caps_count_from_the_box_start_not_from_the_watchdog():
    hours = Watch(Limits(max_hours=2, started_at=0), since=3600)
    assert hours.observe(IDLE, 7199) is None and "its cap is 2 h" in hours.observe(IDLE, 7200)
    spend = Watch(Limits(max_spend_usd=1.0, rate_usd_h=0.5, started_at=0), since=0)
    assert spend.observe(IDLE, 7199) is None and "its cap is $1" in spend.observe(IDLE, 7200)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limits(), "no limit given"),
        (Limits(idle_s=0), "idle must be positive"),
        (Limits(max_spend_usd=5), "needs the box's --rate"),
    ],
)
def test_bad_limits_are_refused(limits, message):
    with pytest.raises(WatchdogError, match=message):
        limits.check()


def test_activity_from_prometheus_text():
    text = "\n".join(
        [
            "# HELP csm_last_request_timestamp_seconds x",
            "csm_last_request_timestamp_seconds 1.7e+09",
            "csm_active_streams 0.0",
            'csm_requests_total{route="/v1/audio/speech",status="200"} 3.0',
            "csm_queue_depth 2.0",
        ]
    )
    assert parse_activity(text) == Observation(True, last_request=1.7e9, busy=True)
    assert parse_activity("csm_last_request_timestamp_seconds 0.0\ncsm_active_streams 0") == Observation(True)


def test_the_key_comes_from_the_environment_else_pid_1s(tmp_path):
    env = {"CONTAINER_ID": "42", "CONTAINER_API_KEY": "scoped"}
    assert instance_key(env, pid1=dict, saved=dict) == InstanceKey("42", "scoped")
    assert instance_key({}, pid1=lambda: env, saved=dict) == InstanceKey("42", "scoped")
    saved = tmp_path / "instance.env"
    saved.write_text("CONTAINER_ID=42\nCONTAINER_API_KEY=scoped\n")
    assert instance_key({}, pid1=dict, saved=lambda: environ_of_file(str(saved))) == InstanceKey("42", "scoped")
    assert "scoped" not in repr(instance_key(env, pid1=dict, saved=dict))  # never in a log line
    with pytest.raises(WatchdogError, match="no instance-scoped key"):
        instance_key({"CONTAINER_ID": "42"}, pid1=dict, saved=dict)


def test_run_destroys_once_with_retries_and_leaves_the_reason_and_each_error_in_the_state(tmp_path):
    """The loop with its vast calls stood in (the real ones are tested against the emulator elsewhere): a refused
    destroy is in the state file, try by try, and is tried again with a growing delay."""
    now = [0.0]
    calls: list[str] = []
    seen: list[dict] = []
    state = tmp_path / "watchdog.json"

    def destroy():
        calls.append("delete")
        seen.append(json.loads(state.read_text()))
        if len(calls) == 1:
            raise Refused("HTTP 403: error code: 1010")
        if len(calls) == 2:
            raise Unanswered("HTTP 500: boom")

    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    settings = Settings("http://127.0.0.1:1", "tok", Limits(idle_s=10, started_at=0), poll_s=1.0, state_file=state)
    reason = run(
        settings,
        InstanceKey("7", "k"),
        poll=lambda: IDLE,
        destroy=destroy,
        verify=dict,
        clock=lambda: now[0],
        sleep=sleep,
    )
    assert "no request for 10 s" in reason and calls == ["delete"] * 3
    assert seen[0]["armed"] and seen[0]["action"] == "destroying" and seen[0]["idle_s"] == 10
    assert seen[1]["last_error"] == "destroy refused (try 1): HTTP 403: error code: 1010"
    assert seen[1]["destroy_tries"] == 1 and seen[1]["next_try_at"] == 15.0
    assert seen[2]["last_error"].startswith("destroy failed (try 2)")
    assert sleeps[-2:] == [5.0, 10.0]  # backoff between destroys
    final = json.loads(state.read_text())
    assert final["action"] == "destroyed" and "no request" in final["reason"] and final["destroy_tries"] == 3


def test_the_state_tracks_idle_time_and_spend_while_watching(tmp_path):
    now = [7100.0]
    states: list[dict] = []
    state = tmp_path / "watchdog.json"

    def poll():
        if states and states[-1]["idle_s"] >= 20:
            return Observation(True, last_request=now[0], busy=False)  # a request resets the idle clock
        return IDLE

    def sleep(s: float) -> None:
        states.append(json.loads(state.read_text()))
        now[0] += s
        if len(states) > 40:
            raise AssertionError("never destroyed")

    limits = Limits(idle_s=60, max_spend_usd=1.0, rate_usd_h=0.5, started_at=0)
    settings = Settings("http://127.0.0.1:1", "tok", limits, poll_s=10.0, state_file=state)
    run(
        settings, InstanceKey("7", "k"), poll=poll, destroy=lambda: None, verify=dict, clock=lambda: now[0], sleep=sleep
    )
    first = states[0]
    assert first["armed"] and first["action"] == "watching" and first["limits"]["max_spend_usd"] == 1.0
    assert first["spent_usd"] == pytest.approx(0.5 * 7100 / 3600) and first["hours"] == pytest.approx(7100 / 3600)
    assert [s["idle_s"] for s in states[:4]] == [0, 10, 20, 0]
    assert "its cap is $1" in json.loads(state.read_text())["reason"]


def test_a_refused_key_at_start_is_one_error_in_the_state_and_nothing_is_watched(tmp_path):
    state = tmp_path / "watchdog.json"
    settings = Settings("http://127.0.0.1:1", "tok", Limits(idle_s=10, started_at=0), state_file=state)

    def refused():
        raise Refused("HTTP 401: Invalid user key")

    with pytest.raises(Refused, match="vast refused the instance key: HTTP 401"):
        run(settings, InstanceKey("7", "k"), poll=lambda: pytest.fail("polled"), verify=refused, sleep=lambda s: None)
    written = json.loads(state.read_text())
    assert not written["armed"] and written["action"] == "refused" and "Invalid user key" in written["last_error"]

    tries = []

    def silent():
        tries.append(1)
        raise Unanswered("no answer: connection refused")

    with pytest.raises(Refused, match="vast did not answer"):
        run(settings, InstanceKey("7", "k"), poll=lambda: pytest.fail("polled"), verify=silent, sleep=lambda s: None)
    assert len(tries) == 4  # asked again three times before it gives up
