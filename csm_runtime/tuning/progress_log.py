"""`autotune --progress-jsonl PATH`: autotune's results as it goes, one JSON object a line, so that a time limit or a
kill loses nothing already measured.

Each line is appended and flushed the moment its result exists; every line has `event` and `t` (seconds since
autotune started). A run starts with `start` and ends with exactly one of `done`, `failed` or `stopped` (unless
killed with SIGKILL). The events, in order:

    start           model, device (slug), plan (the sweep's options)
    round           candidate, round (from 1), extra (a round added because the first ones disagreed), ms_per_frame
                    (the round's mean step), rtf, ttfa_ms ({first chunk frames: ms}, before the admission wait)
    row             done, total, candidate (the table row as the profile has it, with its measurement)
    chosen          candidate, settings, realtime, why
    server          pid (also its process group), port: the delivery check's server once launched
    delivery_round  attempt, round, rtf, ttfa_ms: one probe request
    delivery        attempt, again (why it is measured again, or null), delivery (the profile's delivery block so far)
    done            summary (what `--json` prints)
    failed          exit, error (the one line printed)
    stopped         exit, signal (SIGTERM, SIGINT, SIGHUP): the server's process group was ended
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class ProgressLog:
    """Appends event lines to `path` (nothing when `path` is None); each write is flushed at once."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.t0 = time.monotonic()
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run, closed in close()

    def __call__(self, event: str, **fields: Any) -> None:
        if self._file is None:
            return
        line = json.dumps({"event": event, "t": round(time.monotonic() - self.t0, 3), **fields}, default=str)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ProgressLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
