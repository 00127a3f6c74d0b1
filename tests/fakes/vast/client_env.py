"""The environment the real vastai CLI needs to talk to the emulator, for the tests and benchmarks that run it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def vastai_env(emu: Any, home: Path) -> dict[str, str]:
    """The emulator's URL and key, no update check, and a HOME and XDG folders of its own: the CLI keeps its key and
    its ssh-url port cache there, never in the operator's."""
    return {
        "VAST_URL": emu.url,
        "VAST_API_KEY": emu.api_key,
        "VASTAI_NO_UPDATE_CHECK": "1",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
    }
