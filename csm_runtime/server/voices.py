"""The voice table: name -> speaker id, plus an optional reference clip and transcript used as generation context.

File voices are loaded at start-up: the packaged `csm_runtime/voices/*.yaml`, then `voices_dir/*.yaml` (later files
win), so an operator adds or overrides voices without touching the package; they are read-only through the API.
Uploaded voices (POST /v1/voices, voice_store.py) join the table at start-up and as they are uploaded. Every
reference clip is encoded with Mimi once (a file voice's when the model has loaded, an upload's at upload) and the
table keeps its codes, so a request never re-encodes a voice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from csm_runtime.engine.types import Segment
from csm_runtime.server.clips import FRAME_SAMPLES, SAMPLE_RATE, ClipError, decode_clip
from csm_runtime.server.voice_store import StoredVoice

log = logging.getLogger("csm_runtime.server.voices")
FILE_CLIP_MAX_S = 120.0  # an operator's reference clip may be longer than an upload, but not without bound

PACKAGED_DIR = Path(__file__).resolve().parent.parent / "voices"


class VoiceError(ValueError):
    """A voice file that cannot be used; the message names the file and the voice."""


@dataclass
class Voice:
    name: str
    speaker: int
    description: str = ""
    audio_path: str | None = None
    transcript: str | None = None
    source: str = ""  # the YAML file it came from; "" for an upload
    context: list = field(default_factory=list, repr=False)  # [Segment(codes=...)] once encoded
    uploaded: bool = False
    clip_s: float | None = None
    frames: int | None = None
    created: int | None = None

    def public(self) -> dict[str, Any]:
        """The API's voice object."""
        return {
            "id": self.name,
            "object": "voice",
            "name": self.name,
            "speaker": self.speaker,
            "description": self.description,
            "transcript": self.transcript,
            "clip_s": self.clip_s,
            "frames": self.frames,
            "created": self.created,
            "source": "upload" if self.uploaded else "file",
            "has_reference_audio": self.uploaded or self.audio_path is not None,
        }


def from_stored(stored: StoredVoice) -> Voice:
    """A table entry for an uploaded voice: its stored codes are the context, as they are."""
    return Voice(
        name=stored.name,
        speaker=stored.speaker,
        description=stored.description,
        transcript=stored.transcript,
        context=[Segment(text=stored.transcript, speaker=stored.speaker, codes=stored.codes)],
        uploaded=True,
        clip_s=stored.clip_s,
        frames=int(stored.codes.shape[1]),
        created=stored.created,
    )


def _parse_file(path: Path) -> dict[str, Voice]:
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("voices", data) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise VoiceError(f"{path}: expected a mapping `voices: {{name: {{speaker: N, ...}}}}`")
    out = {}
    for name, spec in entries.items():
        if isinstance(spec, int):
            spec = {"speaker": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("speaker"), int) or spec["speaker"] < 0:
            raise VoiceError(f"{path}: voice {name!r} needs `speaker: <non-negative int>`")
        unknown = set(spec) - {"speaker", "audio", "transcript", "description"}
        if unknown:
            raise VoiceError(f"{path}: voice {name!r} has unknown key(s) {', '.join(sorted(unknown))}")
        audio = spec.get("audio")
        if audio is not None:
            audio_path = (path.parent / audio).resolve()
            if not audio_path.is_file():
                raise VoiceError(f"{path}: voice {name!r}: reference audio {audio_path} not found")
            if not spec.get("transcript"):
                raise VoiceError(f"{path}: voice {name!r}: reference audio needs its `transcript`")
            audio = str(audio_path)
        out[str(name)] = Voice(
            str(name), spec["speaker"], str(spec.get("description", "")), audio, spec.get("transcript"), str(path)
        )
    return out


def load_voices(voices_dir: str | Path | None = None) -> dict[str, Voice]:
    """Packaged defaults, then `voices_dir/*.yaml` in name order; no audio is decoded yet."""
    voices: dict[str, Voice] = {}
    for path in sorted(PACKAGED_DIR.glob("*.yaml")):
        voices.update(_parse_file(path))
    if voices_dir:
        vdir = Path(voices_dir)
        if not vdir.is_dir():
            raise VoiceError(f"voices_dir {vdir} is not a directory")
        for path in sorted(vdir.glob("*.y*ml")):
            voices.update(_parse_file(path))
    return voices


def add_uploaded_voices(voices: dict[str, Voice], store) -> None:
    """The store's voices join the table at start-up; a voice file's voice of the same name wins (logged)."""
    for name, stored in store.load().items():
        if name in voices:
            log.warning("stored voice %r is hidden by the voice file %s", name, voices[name].source)
        else:
            voices[name] = from_stored(stored)


def encode_file_voices(voices: dict[str, Voice], gen) -> None:
    """Encode each file voice's reference clip with the generator's Mimi, once, and keep the codes as its context.
    Runs on the engine thread right after the model loads; the clip is decoded and trimmed like an upload."""
    import torch

    for voice in voices.values():
        if voice.audio_path is None or voice.uploaded:
            continue
        try:
            wav = decode_clip(
                Path(voice.audio_path).read_bytes(), min_s=FRAME_SAMPLES / SAMPLE_RATE, max_s=FILE_CLIP_MAX_S
            )
        except (ClipError, OSError) as exc:
            raise VoiceError(
                f"{voice.source}: voice {voice.name!r}: reference audio {voice.audio_path}: {exc}"
            ) from None
        codes = gen.codec.encode(torch.from_numpy(wav)).cpu().numpy().astype("int64")
        voice.context = [Segment(text=voice.transcript, speaker=voice.speaker, codes=codes)]
        voice.clip_s = round(len(wav) / SAMPLE_RATE, 3)
        voice.frames = int(codes.shape[1])
