"""The watchdog's decisions (idle, a dead server, the hours and spend caps), what it reads from /metrics, and where it
finds vast's instance-scoped key. The process against a real server and the vast emulator is in
tests/integration/test_watchdog.py."""

from __future__ import annotations

import pytest

from csm_runtime.watchdog import (
    InstanceKey,
    Limits,
    Observation,
    Settings,
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


def test_run_destroys_once_with_retries_and_leaves_the_reason(tmp_path):
    now = [0.0]
    calls: list[str] = []

    def destroy():
        calls.append("delete")
        if len(calls) < 3:
            raise OSError("HTTP 500")

    state = tmp_path / "watchdog.json"
    settings = Settings("http://127.0.0.1:1", "tok", Limits(idle_s=10, started_at=0), poll_s=1.0, state_file=state)
    reason = run(
        settings,
        InstanceKey("7", "k"),
        poll=lambda: IDLE,
        destroy=destroy,
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s),
    )
    assert "no request for 10 s" in reason and calls == ["delete"] * 3
    assert '"action": "destroyed"' in state.read_text() and "no request" in state.read_text()
