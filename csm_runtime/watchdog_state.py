"""The watchdog's state file on the box: whether it armed, its limits, how long the box idled, what it spent so far,
when it last looked and the last error. `deploy provision` waits for `armed` before it goes on, and `deploy status`
shows the file per rental (read over SSH), so it is rewritten whole each time (write a temporary file, then rename):
a reader never sees half of one.

Fields (JSON object): armed (bool), action (arming | watching | destroying | destroyed | refused), instance, pid,
limits {idle_s, max_hours, max_spend_usd, rate_usd_h, started_at}, poll_s, idle_s, hours, spent_usd, last_check
(unix time), last_error (one line or null), reason (why it destroys), destroy_tries, next_try_at, at (unix time).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class State:
    """What the file holds; `save` writes it whole."""

    path: Path | None
    instance: str
    limits: dict[str, Any]
    poll_s: float
    armed: bool = False
    action: str = "arming"
    idle_s: float = 0.0
    hours: float = 0.0
    spent_usd: float = 0.0
    last_check: float | None = None
    last_error: str | None = None
    reason: str | None = None
    destroy_tries: int = 0
    next_try_at: float | None = None
    pid: int = field(default_factory=os.getpid)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("path")
        return {**out, "at": time.time()}

    def save(self, **changes: Any) -> None:
        """Apply `changes`, then replace the file atomically (no file configured: nothing is written)."""
        for name, value in changes.items():
            if not hasattr(self, name):
                raise AttributeError(f"no state field {name!r}")
            setattr(self, name, value)
        if self.path is None:
            return
        write_atomically(self.path, json.dumps(self.as_dict(), sort_keys=True) + "\n")


def write_atomically(path: Path, text: str) -> None:
    """The whole text or the old file, never half: write beside it, flush to disk, rename over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
