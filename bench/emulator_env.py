"""The environment the real vastai CLI and `deploy` need to work against the vast.ai emulator, for the benchmarks
that drive them (bench_cli.py in this process, bench_money.py through the console script)."""

from __future__ import annotations

from pathlib import Path

from tests.fakes.vast.client_env import vastai_env


def emulator_env(emu, home: Path, *, poll_s: float, **extra: str) -> dict[str, str]:
    """The emulator's URL and key, a HOME of their own (the vastai CLI keeps its key and cache there, not the
    operator's), polls every `poll_s`, a check command any box answers; `extra` adds or overrides variables."""
    return {
        **vastai_env(emu, home),
        "DEPLOY_POLL_INTERVAL_S": f"{poll_s:g}",
        "DEPLOY_CHECK_COMMAND": "uname -sm",
        **extra,
    }
