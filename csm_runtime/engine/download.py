"""How far a Hub download has come, read from the cache while `from_pretrained` / `hf_hub_download` fill it.

The first start on a box downloads several GB, and the loading thread is silent meanwhile. huggingface_hub writes
each file to `blobs/<etag>.incomplete` in the repo's cache folder (renamed to `blobs/<etag>` when whole; the etag is
the sha256 for LFS files, the git blob id otherwise), so its size is the bytes so far, visible from any thread. The
total comes from one listing of the repo's top level (the files `from_pretrained` fetches: configs, tokenizer, the
safetensors weights; not other formats that some repos carry beside them, e.g. a `ckpt.pt`).

`DownloadWatch` is a context manager around the download: a thread samples the cache every few seconds, logs one
line every `log_every_s` (bytes / total, rate) and keeps the latest snapshot, which `current()` hands to `/ready`
so `deploy provision` shows the box's download from here. No torch here; huggingface_hub loads when a watch starts.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("csm_runtime.download")

SMALL_FILES = ("*.json", "*.jinja", "tokenizer.*", "*.txt", "*.model")  # what from_pretrained reads beside weights
WEIGHTS = ("*.safetensors", "*.bin")  # the first pattern with files wins: safetensors when present
_active: list[DownloadWatch] = []
_lock = threading.Lock()


@dataclass(frozen=True)
class Snapshot:
    repo: str
    done_bytes: int  # on disk, whole files and partial ones, of the files this load needs
    total_bytes: int | None  # None: the listing failed (the load itself then reports why)
    rate_bytes_s: float  # over the last sample interval
    files_done: int
    files: int | None
    elapsed_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def describe(s: Snapshot) -> str:
    """`downloading sesame/csm-1b: 1.20 GB of 4.10 GB (29%), 45.1 MB/s`."""
    done = human_bytes(s.done_bytes)
    if s.total_bytes:
        pct = 100.0 * s.done_bytes / s.total_bytes
        return f"downloading {s.repo}: {done} of {human_bytes(s.total_bytes)} ({pct:.0f}%), {human_bytes(s.rate_bytes_s)}/s"
    return f"downloading {s.repo}: {done} so far, {human_bytes(s.rate_bytes_s)}/s"


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def current() -> dict | None:
    """The running download's latest snapshot (what `/ready` reports while loading), or None."""
    with _lock:
        watch = _active[-1] if _active else None
    snap = watch.snapshot if watch is not None else None
    return snap.as_dict() if snap is not None else None


def checkpoint_files(paths: list[str]) -> list[str]:
    """The top-level files `from_pretrained` downloads: small configs and the weights in one format."""
    top = [p for p in paths if "/" not in p]
    chosen = [p for p in top if any(fnmatch.fnmatch(p, pat) for pat in SMALL_FILES)]
    for pattern in WEIGHTS:
        weights = [p for p in top if fnmatch.fnmatch(p, pattern)]
        if weights:
            return chosen + weights
    return chosen


class DownloadWatch:
    """Watch `repo`'s cache while the block runs. `select(paths) -> paths` picks the files the load needs."""

    def __init__(
        self,
        repo: str,
        *,
        revision: str | None = None,
        token: str | None = None,
        select: Callable[[list[str]], list[str]] = checkpoint_files,
        interval_s: float = 1.0,
        log_every_s: float = 10.0,
    ) -> None:
        self.repo, self.revision, self.token, self.select = repo, revision, token, select
        self.interval_s, self.log_every_s = interval_s, log_every_s
        self.snapshot: Snapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._blobs: Path | None = None
        self._plan: dict[str, int] | None = None  # blob name -> size

    def __enter__(self) -> DownloadWatch:
        try:
            if not self._prepare():
                return self
        except Exception as exc:  # noqa: BLE001 - progress is a courtesy: the download itself must not fail for it
            log.debug("no download progress for %s: %s", self.repo, exc)
            return self
        self._thread = threading.Thread(target=self._run, name="hub-download-watch", daemon=True)
        with _lock:
            _active.append(self)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with _lock:
            if self in _active:
                _active.remove(self)

    def _prepare(self) -> bool:
        """Where the blobs land and which of them this load needs; False when nothing will be downloaded."""
        from huggingface_hub import HfApi, constants
        from huggingface_hub.file_download import repo_folder_name

        from csm_runtime.engine.hub import is_hub_id

        if not is_hub_id(self.repo) or constants.HF_HUB_OFFLINE:
            return False
        self._blobs = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=self.repo, repo_type="model") / "blobs"
        try:
            entries = list(HfApi().list_repo_tree(self.repo, revision=self.revision, token=self.token))
        except Exception as exc:  # noqa: BLE001 - refused or unreachable: the download raises its own error
            log.debug("cannot list %s for the download total: %s", self.repo, exc)
            return True
        files = {e.path: e for e in entries if getattr(e, "size", None) is not None and hasattr(e, "blob_id")}
        wanted = self.select(list(files))
        plan = {}
        for path in wanted:
            entry = files[path]
            lfs = getattr(entry, "lfs", None)
            plan[lfs.sha256 if lfs else entry.blob_id] = int(lfs.size if lfs else entry.size)
        self._plan = plan
        return True

    def _measure(self) -> tuple[int, int]:
        """(bytes on disk of the planned files, whole files among them); without a plan, every partial file."""
        blobs = self._blobs
        if blobs is None or not blobs.is_dir():
            return 0, 0
        done, whole = 0, 0
        if self._plan is None:
            for part in blobs.glob("*.incomplete"):
                done += _size(part)
            return done, 0
        for name, size in self._plan.items():
            if (blobs / name).exists():
                done += size
                whole += 1
            else:
                done += _size(blobs / f"{name}.incomplete")
        return done, whole

    def _run(self) -> None:
        started = time.monotonic()
        first, _ = self._measure()
        last_bytes, last_t, last_log = first, started, started
        total = sum(self._plan.values()) if self._plan is not None else None
        if total is not None and first >= total:
            return  # all in the cache already: nothing to watch
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            done, whole = self._measure()
            rate = max(0.0, (done - last_bytes) / (now - last_t)) if now > last_t else 0.0
            files = len(self._plan) if self._plan is not None else None
            self.snapshot = Snapshot(self.repo, done, total, round(rate, 1), whole, files, round(now - started, 1))
            last_bytes, last_t = done, now
            if done > first and now - last_log >= self.log_every_s:
                log.info("%s", describe(self.snapshot))
                last_log = now
        done, _ = self._measure()
        if done > first:
            log.info("downloaded %s of %s in %.0f s", human_bytes(done - first), self.repo, time.monotonic() - started)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
