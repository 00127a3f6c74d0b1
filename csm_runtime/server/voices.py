"""The voice table: name -> speaker id, plus an optional reference clip and transcript used as generation context.

Loaded once at start-up: the packaged `csm_runtime/voices/*.yaml`, then `voices_dir/*.yaml` (later files win), so an
operator adds or overrides voices without touching the package. Reference audio is decoded and resampled to the
model's rate here, once, not per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from csm_runtime.engine.types import Segment

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
    source: str = ""
    context: list = field(default_factory=list, repr=False)  # [Segment] once loaded

    def public(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "name": self.name,
            "speaker": self.speaker,
            "description": self.description,
            "has_reference_audio": self.audio_path is not None,
        }


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


def load_reference_audio(voices: dict[str, Voice], sample_rate: int) -> None:
    """Decode each reference clip to a mono float32 tensor at `sample_rate` and store it as a context Segment."""
    # Loaded here, once the model is: importing the server (and `csm-runtime serve --help`) stays free of torch.
    import soundfile as sf
    import torch
    import torchaudio.functional as F

    for voice in voices.values():
        if voice.audio_path is None:
            continue
        data, rate = sf.read(voice.audio_path, dtype="float32", always_2d=True)
        wav = torch.from_numpy(data.mean(axis=1))
        if rate != sample_rate:
            wav = F.resample(wav, rate, sample_rate)
        voice.context = [Segment(text=voice.transcript, speaker=voice.speaker, audio=wav)]
