"""Uploaded voices on disk: one meta JSON and one Mimi codes `.npy` per voice in `<voices root>/uploaded/`.

The directory is 0700 and every file 0600: a voice is a person's voice. A name is checked against NAME_PATTERN
before it becomes part of a path, so nothing is written outside the directory. Writes are atomic: the codes go to
a new file named after the voice plus a random suffix, then the meta JSON that names that file replaces the old one
by rename; the JSON is the commit. A crash leaves either the old voice or the new one, and start-up removes what no
meta names (half-written temporaries, codes of a replaced voice).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("csm_runtime.voice_store")

NAME_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
NUM_CODEBOOKS = 32
UPLOADED = "uploaded"


def valid_name(name: object) -> bool:
    """`[A-Za-z0-9_.-]{1,64}`, not `.` or `..`: safe as a file name and as one URL path segment."""
    return isinstance(name, str) and re.fullmatch(NAME_PATTERN, name) is not None and name not in (".", "..")


def store_dir(settings) -> Path:
    """`<voices_dir>/uploaded`, or `<voice_store_dir>/uploaded` (home expanded) when voices_dir is unset."""
    root = settings.voices_dir or os.path.expanduser(settings.voice_store_dir)
    return Path(root) / UPLOADED


@dataclass
class StoredVoice:
    name: str
    speaker: int
    description: str
    transcript: str
    codes: np.ndarray  # [32, T] int64
    clip_s: float
    created: int


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` 0600 (never following a link or reusing a file), write, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _npy_bytes(codes: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(codes, dtype=np.int64), allow_pickle=False)
    return buf.getvalue()


class VoiceStore:
    """The uploaded voices' directory. Methods are synchronous and quick (two small files); the router serialises
    writers."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def _ensure_dir(self) -> None:
        self.dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def _meta_path(self, name: str) -> Path:
        if not valid_name(name):
            raise ValueError(f"invalid voice name {name!r}")
        return self.dir / f"{name}.json"

    def save(self, voice: StoredVoice) -> None:
        """Write (or atomically replace) one voice; the old codes file goes once the new meta is in place."""
        meta_path = self._meta_path(voice.name)
        self._ensure_dir()
        old = self._codes_file(meta_path)
        codes_name = f"{voice.name}.{secrets.token_hex(6)}.npy"
        meta = {
            "name": voice.name,
            "speaker": voice.speaker,
            "description": voice.description,
            "transcript": voice.transcript,
            "clip_s": voice.clip_s,
            "created": voice.created,
            "codes": codes_name,
        }
        tmp_meta = self.dir / f".tmp-{secrets.token_hex(8)}"
        try:
            _write_private(self.dir / codes_name, _npy_bytes(voice.codes))
            _write_private(tmp_meta, json.dumps(meta).encode())
            os.replace(tmp_meta, meta_path)
        except BaseException:
            for leftover in (tmp_meta, self.dir / codes_name):
                leftover.unlink(missing_ok=True)
            raise
        self._fsync_dir()
        if old is not None and old != codes_name:
            (self.dir / old).unlink(missing_ok=True)

    def delete(self, name: str) -> None:
        meta_path = self._meta_path(name)
        codes = self._codes_file(meta_path)
        meta_path.unlink(missing_ok=True)
        if codes is not None:
            (self.dir / codes).unlink(missing_ok=True)
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _codes_file(self, meta_path: Path) -> str | None:
        try:
            codes = json.loads(meta_path.read_text()).get("codes")
        except (OSError, ValueError, AttributeError):
            return None
        return codes if isinstance(codes, str) and "/" not in codes and codes not in (".", "..") else None

    def load(self) -> dict[str, StoredVoice]:
        """Every voice whose meta and codes read back; unreadable ones are logged and skipped, files no meta names
        are removed. A directory that does not exist yet holds no voices (it is made at the first upload)."""
        if not self.dir.is_dir():
            return {}
        os.chmod(self.dir, 0o700)
        voices: dict[str, StoredVoice] = {}
        keep: set[str] = set()
        for meta_path in sorted(self.dir.glob("*.json")):
            name = meta_path.name[: -len(".json")]
            try:
                voice, codes_name = self._read(meta_path, name)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping stored voice %r: %s", name, exc)
                keep.add(meta_path.name)  # left for the operator to look at, never silently deleted
                continue
            voices[name] = voice
            keep.update((meta_path.name, codes_name))
        for path in self.dir.iterdir():
            if path.name not in keep and (path.name.startswith(".tmp-") or path.suffix == ".npy"):
                path.unlink(missing_ok=True)
        return voices

    def _read(self, meta_path: Path, name: str) -> tuple[StoredVoice, str]:
        if not valid_name(name):
            raise ValueError("not a valid voice name")
        meta = json.loads(meta_path.read_text())
        codes_name = self._codes_file(meta_path)
        if meta.get("name") != name or codes_name is None:
            raise ValueError("meta does not match its file name")
        codes = np.load(self.dir / codes_name, allow_pickle=False)
        if codes.ndim != 2 or codes.shape[0] != NUM_CODEBOOKS or codes.shape[1] < 1 or codes.dtype != np.int64:
            raise ValueError(f"codes of shape {codes.shape} ({codes.dtype}), expected [32, frames] int64")
        speaker = meta["speaker"]
        if not isinstance(speaker, int) or isinstance(speaker, bool) or speaker < 0:
            raise ValueError(f"bad speaker {speaker!r}")
        voice = StoredVoice(
            name=name,
            speaker=speaker,
            description=str(meta.get("description", "")),
            transcript=str(meta["transcript"]),
            codes=codes,
            clip_s=float(meta["clip_s"]),
            created=int(meta["created"]),
        )
        return voice, codes_name
