"""The emulator's API inside a network namespace's box (tests/fakes/netns_box.py), at the address this machine uses.

A box there has a network of its own, so the emulator on this machine's 127.0.0.1 is out of its reach, yet the box's
watchdog must reach vast: it arms by asking vast about its own instance before provision goes on, at `VAST_URL`
(127.0.0.1:PORT here). Two relays put the API at the same address inside the box, as tests/fakes/tcp_relay.py does for
the Hub stand-in: one here from the veth address to 127.0.0.1, one in the namespace from its 127.0.0.1 to the veth.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.fakes.tcp_relay import Relay

ROOT = Path(__file__).resolve().parents[3]


@contextlib.contextmanager
def api_inside(box: Any, url: str) -> Iterator[None]:
    """While inside, `url` (http://127.0.0.1:PORT) answers in `box`'s namespace too."""
    port = int(url.rsplit(":", 1)[1])
    here = Relay((box.host_addr, 0), ("127.0.0.1", port)).start()
    relay = [sys.executable, "-m", "tests.fakes.tcp_relay", "127.0.0.1", str(port), box.host_addr, str(here.port)]
    there = subprocess.Popen([*box.exec_prefix(), *relay], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert there.stdout is not None and there.stdout.readline().strip() == "listening"
        yield
    finally:
        there.terminate()
        there.wait(10)
        here.stop()
