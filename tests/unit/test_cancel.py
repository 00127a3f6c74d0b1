"""The cancel token's rules with real signals delivered to this process (pytest runs tests in the main thread):
which signal interrupts, which is only recorded, reported or abandons, and the exit code and last line."""

from __future__ import annotations

import signal

import pytest

from deploy.cancel import Abandon, CancelToken, Interrupt, Interrupted, current, ending, handle_signals, shielded


def test_the_first_signal_breaks_out_of_an_interruptible_block_only():
    with handle_signals() as token:
        signal.raise_signal(signal.SIGTERM)  # outside: recorded, nothing raised
        assert token.is_set() and token.signum == signal.SIGTERM
    with handle_signals() as token, pytest.raises(Interrupt) as caught, token.interruptible():
        signal.raise_signal(signal.SIGHUP)
    assert caught.value.signum == signal.SIGHUP and token.signum == signal.SIGHUP


def test_a_shielded_call_finishes_and_the_next_check_stops_the_flow():
    with handle_signals() as token:
        with token.interruptible(), shielded():
            signal.raise_signal(signal.SIGINT)
            finished = True
        assert finished
        with pytest.raises(Exception, match="cancelled before wait_running"):
            token.check("cancelled before wait_running")


def test_during_a_rollback_the_second_signal_is_reported_and_the_third_abandons(capfd):
    with handle_signals() as token, pytest.raises(Interrupt), token.interruptible():
        signal.raise_signal(signal.SIGINT)
    with handle_signals(token), token.rolling_back("destroying rental 1 (vast instance 7)"):
        signal.raise_signal(signal.SIGINT)  # reported, the rollback goes on
        assert "rollback in progress: destroying rental 1 (vast instance 7); press Ctrl-C again to abandon it" in (
            capfd.readouterr().err
        )
        with pytest.raises(Abandon):
            signal.raise_signal(signal.SIGINT)
    assert token.signum == signal.SIGINT  # the first signal sets the exit code


def test_a_fleet_token_never_abandons_rollbacks_it_does_not_run(capfd):
    with handle_signals(abandon=False) as token:
        for _ in range(4):
            signal.raise_signal(signal.SIGTERM)
    assert token.is_set() and "press Ctrl-C again" not in capfd.readouterr().err


def test_handlers_and_the_installed_token_are_restored_after_the_block():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with handle_signals() as token:
        assert current() is token
    assert current() is None
    assert {s: signal.getsignal(s) for s in before} == before
    assert not CancelToken().is_set()


def test_the_exit_code_follows_the_signal_and_the_last_line_says_what_is_left():
    assert ending(Interrupted(signal.SIGINT, "rental 1 destroyed, nothing left billing")) == (
        "interrupted (SIGINT): rental 1 destroyed, nothing left billing",
        130,
    )
    assert ending(Interrupted(signal.SIGTERM, "x"))[1] == 143
    assert ending(Interrupted(signal.SIGHUP, "x"))[1] == 129
    assert ending(Abandon(signal.SIGINT))[1] == 130
    assert ending(ValueError("no")) is None
