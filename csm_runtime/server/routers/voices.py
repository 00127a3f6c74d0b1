"""`/v1/voices`: list, show, upload and delete voices.

An upload is checked in full before anything is kept: the form fields, then the clip (decoded from memory, bounded,
off the event loop), then the clip is encoded with Mimi once on the engine thread, and only then are its codes
written (voice_store.py) and the voice added to the table. A refused upload leaves nothing behind. The body's size
is capped before this route runs (body_limit.py: `voice_upload_max_bytes`, 413 `file_too_large`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from csm_runtime.engine.sentences import is_speakable
from csm_runtime.server.clips import FRAME_SAMPLES, SAMPLE_RATE, ClipError, decode_clip, encode_clip
from csm_runtime.server.errors import APIError
from csm_runtime.server.jobs import NotReadyError, ShuttingDownError
from csm_runtime.server.openapi_voices import VOICE_UPLOAD_BODY
from csm_runtime.server.voice_store import StoredVoice, valid_name
from csm_runtime.server.voices import from_stored

router = APIRouter(tags=["voices"])
log = logging.getLogger("csm_runtime.server.voices")
MAX_TRANSCRIPT = 1000
MAX_DESCRIPTION = 500
MAX_SPEAKER = 2**31 - 1
CLIP_MIN_S, CLIP_MAX_S = 1.0, 30.0


def _check_budget(settings, samples: int) -> None:
    """A reference clip must fit the context budget alone: one over it would be left out of every prompt."""
    frames = samples // FRAME_SAMPLES
    if frames + 1 > settings.max_context_frames:
        raise APIError(
            400,
            f"the clip is {samples / SAMPLE_RATE:.1f} s; this server's context budget holds "
            f"{(settings.max_context_frames - 1) * FRAME_SAMPLES / SAMPLE_RATE:.1f} s of reference audio "
            f"(max_context_frames {settings.max_context_frames}): send a shorter clip",
            param="audio",
            code="invalid_length",
        )


def _write_lock(state) -> asyncio.Lock:
    """One upload or delete changes the store at a time (per app: each app has its own event loop)."""
    lock = getattr(state, "voice_write_lock", None)
    if lock is None:
        lock = state.voice_write_lock = asyncio.Lock()
    return lock


def _bad(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def _text(form, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"{name} must be a text field, not a file", name)
    return value


def _fields(form) -> dict:
    """The upload's text fields, checked; raises APIError 400 naming the first bad one."""
    name = _text(form, "name")
    if not valid_name(name):
        raise _bad(
            f"name must be 1 to 64 of A-Z a-z 0-9 _ . - (not . or ..), got {name!r}"[:200], "name", "invalid_name"
        )
    transcript = (_text(form, "transcript") or "").strip()
    if not transcript or not is_speakable(transcript):
        raise _bad("transcript is required: the exact words spoken in the clip", "transcript", "missing_transcript")
    if len(transcript) > MAX_TRANSCRIPT:
        raise _bad(f"transcript is {len(transcript)} characters; at most {MAX_TRANSCRIPT}", "transcript")
    speaker_text = (_text(form, "speaker") or "0").strip()
    if not speaker_text.isascii() or not speaker_text.isdigit() or int(speaker_text) > MAX_SPEAKER:
        raise _bad(f"speaker must be an integer from 0 to {MAX_SPEAKER}, got {speaker_text[:20]!r}", "speaker")
    description = _text(form, "description") or ""
    if len(description) > MAX_DESCRIPTION:
        raise _bad(f"description is {len(description)} characters; at most {MAX_DESCRIPTION}", "description")
    replace = (_text(form, "replace") or "false").strip().lower()
    if replace not in ("true", "false"):
        raise _bad(f"replace must be true or false, got {replace[:20]!r}", "replace")
    audio = form.get("audio")
    if not isinstance(audio, UploadFile):
        raise _bad("audio is required: the reference clip, as a file", "audio", "invalid_audio")
    return {
        "name": name,
        "transcript": transcript,
        "speaker": int(speaker_text),
        "description": description,
        "replace": replace == "true",
        "audio": audio,
    }


def _check_room(state, name: str, replace: bool) -> None:
    """409 when the name is taken (and not to be replaced) or the store is full."""
    existing = state.voices.get(name)
    if existing is not None and not replace:
        raise APIError(
            409, f"voice {name!r} exists; send replace=true to replace it", param="name", code="voice_exists"
        )
    if existing is not None and not existing.uploaded:
        raise APIError(
            409, f"voice {name!r} comes from a voice file and cannot be replaced", param="name", code="voice_read_only"
        )
    uploaded = sum(1 for v in state.voices.values() if v.uploaded)
    limit = state.settings.max_voices
    if existing is None and uploaded >= limit:
        raise APIError(
            409, f"this server keeps at most {limit} uploaded voices; delete one first", code="too_many_voices"
        )


@router.post("/v1/voices", status_code=201, openapi_extra=VOICE_UPLOAD_BODY)
async def create_voice(request: Request) -> dict:
    """Create a voice from a reference clip and its transcript (multipart/form-data). The clip is encoded once."""
    state = request.app.state
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise APIError(
            400, "send the voice as multipart/form-data (fields name, audio, transcript)", code="invalid_value"
        )
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception as exc:  # noqa: BLE001 - Starlette raises several kinds for a malformed body
        detail = getattr(exc, "detail", None) or str(exc)
        raise APIError(400, f"malformed multipart body: {str(detail)[:200]}", code="invalid_value") from None
    try:
        fields = _fields(form)
        name = fields["name"]
        _check_room(state, name, fields["replace"])
        data = await fields["audio"].read()
        try:
            wav = await asyncio.to_thread(decode_clip, data, min_s=CLIP_MIN_S, max_s=CLIP_MAX_S)
        except ClipError as exc:
            raise APIError(exc.status, exc.message, param="audio", code=exc.code) from None
        finally:
            del data
        _check_budget(state.settings, len(wav))
        try:
            codes = await encode_clip(state.scheduler, wav)
        except (NotReadyError, ShuttingDownError) as exc:
            raise APIError(503, str(exc), code="not_ready", headers={"Retry-After": "5"}) from None
        stored = StoredVoice(
            name=name,
            speaker=fields["speaker"],
            description=fields["description"],
            transcript=fields["transcript"],
            codes=codes,
            clip_s=round(len(wav) / SAMPLE_RATE, 3),
            created=int(time.time()),
        )
        async with _write_lock(state):
            _check_room(state, name, fields["replace"])  # again: another upload may have won the name meanwhile
            try:
                await asyncio.to_thread(state.voice_store.save, stored)
            except OSError as exc:
                log.error("could not store voice %r: %s", name, exc)
                raise APIError(500, "could not store the voice on the server's disk", code="storage_failed") from None
            voice = from_stored(stored)
            state.voices[name] = voice
    finally:
        await form.close()
    log.info("voice %r stored (%d frames, speaker %d)", name, voice.frames, voice.speaker)
    return voice.public()


@router.get("/v1/voices")
async def list_voices(request: Request) -> dict:
    """Every voice this server speaks: its voice files' and the uploaded ones."""
    voices = request.app.state.voices
    return {"object": "list", "voices": [v.public() for v in voices.values()]}


def _voice(request: Request, voice_id: str):
    voice = request.app.state.voices.get(voice_id)
    if voice is None:
        raise APIError(404, f"no voice {voice_id[:100]!r}; GET /v1/voices lists them", code="voice_not_found")
    return voice


@router.get("/v1/voices/{voice_id}")
async def get_voice(voice_id: str, request: Request) -> dict:
    """One voice."""
    return _voice(request, voice_id).public()


@router.delete("/v1/voices/{voice_id}")
async def delete_voice(voice_id: str, request: Request) -> dict:
    """Delete an uploaded voice (its files too); a voice from a voice file is read-only."""
    state = request.app.state
    async with _write_lock(state):
        voice = _voice(request, voice_id)
        if not voice.uploaded:
            raise APIError(
                409,
                f"voice {voice_id!r} comes from a voice file ({Path(voice.source).name}); it cannot be deleted here",
                code="voice_read_only",
            )
        try:
            await asyncio.to_thread(state.voice_store.delete, voice_id)
        except OSError as exc:
            log.error("could not delete voice %r: %s", voice_id, exc)
            raise APIError(500, "could not delete the voice's files", code="storage_failed") from None
        state.voices.pop(voice_id, None)
    return {"id": voice_id, "object": "voice.deleted", "deleted": True}
