"""A fleet's voice library on this machine: every voice `deploy voice add --fleet` gave the fleet, kept so that a
replica joining later (scale up, heal) gets the same voices before it takes traffic.

DEPLOY_HOME/fleets/<fleet>/voices/<name>/ holds the clip as it was uploaded and voice.json (transcript, speaker,
description, the clip's sha256): folders 0700, files 0600 (a voice is someone's voice). A voice is written to a
temporary folder and renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from deploy.client import check_voice_name
from deploy.errors import NotFoundError

_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


@dataclass(frozen=True)
class LibraryVoice:
    name: str
    transcript: str
    speaker: int
    description: str
    clip: str  # the clip's file name inside the voice's folder
    sha256: str
    bytes: int
    added_at: float

    def as_dict(self) -> dict:
        return asdict(self)


class VoiceLibrary:
    def __init__(self, home: Path, fleet: str):
        self.dir = Path(home) / "fleets" / fleet / "voices"

    def _make(self) -> None:
        for d in (self.dir.parent.parent, self.dir.parent, self.dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(d, 0o700)

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir() if (p / "voice.json").is_file())

    def find(self, name: str) -> LibraryVoice | None:
        meta = self.dir / check_voice_name(name) / "voice.json"
        if not meta.is_file():
            return None
        return LibraryVoice(**json.loads(meta.read_text()))

    def get(self, name: str) -> LibraryVoice:
        voice = self.find(name)
        if voice is None:
            raise NotFoundError(
                f"no voice {name!r} in the fleet's library (known: {', '.join(self.names()) or 'none'})"
            )
        return voice

    def voices(self) -> list[LibraryVoice]:
        return [self.get(n) for n in self.names()]

    def clip_path(self, voice: LibraryVoice) -> Path:
        return self.dir / voice.name / voice.clip

    def put(self, name: str, clip: Path, *, transcript: str, speaker: int, description: str) -> LibraryVoice:
        """Copy the clip in and record the voice, replacing one of the same name."""
        check_voice_name(name)
        self._make()
        suffix = clip.suffix if _SUFFIX.match(clip.suffix) else ""
        staging = self.dir / f".{name}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        data = clip.read_bytes()
        voice = LibraryVoice(
            name,
            transcript,
            speaker,
            description,
            f"clip{suffix}",
            hashlib.sha256(data).hexdigest(),
            len(data),
            time.time(),
        )
        _write_private(staging / voice.clip, data)
        _write_private(staging / "voice.json", json.dumps(voice.as_dict(), indent=2).encode())
        final = self.dir / name
        old = self.dir / f".{name}.{os.getpid()}.old"
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
        return voice

    def remove(self, name: str) -> bool:
        """False when the library had no such voice."""
        folder = self.dir / check_voice_name(name)
        if not folder.exists():
            return False
        gone = self.dir / f".{name}.{os.getpid()}.gone"
        os.replace(folder, gone)
        shutil.rmtree(gone)
        return True


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
