"""A GPU-check part's record (WORK/<part>.json, rewritten after every check so a part killed by its limit keeps what
it finished), the one-check guard, and what every part shares: the dry-run switch, the device, the texts."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # csm_runtime from this checkout, whatever PYTHONPATH says
sys.path.insert(1, str(ROOT / "bench"))

DRY = os.environ.get("GPU_CHECK_DRY_RUN") == "1"
TEXTS = (
    "Hello there, how are you?",
    "The quick brown fox.",
    "Streaming speech, one frame at a time!",
    "A fourth voice joins in.",
    "Numbers: one, two, three, four.",
    "The sixth request speaks.",
    "Seven is a lucky number.",
    "Eight, finally.",
)
NO_CUDA = "no CUDA device" + (" (dry run)" if DRY else "")
NO_COMPILE_DRY = "dry run: inductor compiles take minutes on this CPU"


class Part:
    """One part's record: its checks (pass | fail | skipped | info | error), its numbers, its status."""

    def __init__(self, name: str, work: Path) -> None:
        self.name, self.path = name, work / f"{name}.json"
        self.t0 = time.perf_counter()
        self.data: dict = {"part": name, "status": "running", "dry_run": DRY, "checks": [], "numbers": {}}
        # moshi reads NO_TORCH_COMPILE when it is imported: what this process ran with, for the summary and the test
        self.data["environment"] = {"NO_TORCH_COMPILE": os.environ.get("NO_TORCH_COMPILE")}
        self.save()

    def check(self, name: str, status: str, detail: str = "", **numbers) -> None:
        entry = {"name": name, "status": status, "detail": detail, **numbers}
        self.data["checks"].append(entry)
        print(f"[{self.name}] {status.upper():7} {name}: {detail}", flush=True)
        self.save()

    def numbers(self, **values) -> None:
        self.data["numbers"].update(values)
        self.save()

    def row(self, row: dict) -> None:
        """A benchmark row, kept the moment it is measured."""
        self.data["numbers"].setdefault("rows", []).append(row)
        print(f"[{self.name}] {json.dumps(row)}", flush=True)
        self.save()

    def finish(self, status: str | None = None) -> None:
        states = [c["status"] for c in self.data["checks"]]
        if status is None:
            status = "fail" if "fail" in states or "error" in states else "pass"
            if states and all(s == "skipped" for s in states):
                status = "skipped"
        self.data["status"] = status
        self.save()

    def save(self) -> None:
        self.data["duration_s"] = round(time.perf_counter() - self.t0, 1)
        self.path.write_text(json.dumps(self.data, indent=2, default=str))


def guarded(part: Part, name: str, fn, *args, **kwargs):
    """Run one check; an exception is that check's error (with its last line), never the end of the part."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - recorded, the other checks still run
        tb = traceback.format_exc().strip().splitlines()
        part.check(name, "error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:400])
        print("\n".join(tb[-12:]), file=sys.stderr, flush=True)
        return None


def device_name() -> str:
    """cuda when there is one and this is no dry run; the dry run is CPU by definition."""
    if DRY:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
