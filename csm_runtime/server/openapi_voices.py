"""What the OpenAPI document says about `/v1/voices`: the multipart upload, the voice object, and each route's
statuses. The upload route reads its form itself (routers/voices.py, so each refusal gets its own error code), so
its request body is described here rather than derived by FastAPI."""

from __future__ import annotations

from typing import Any

from csm_runtime.engine.sentences import SPEAKABLE_PATTERN

NAME_SCHEMA = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_.-]{1,64}$",
    "description": "1 to 64 of A-Z a-z 0-9 _ . - (not `.` or `..`). Names are not secrets: every holder of the "
    "server's token can list, use and delete every uploaded voice.",
}
SCHEMAS: dict[str, Any] = {
    "Voice": {
        "type": "object",
        "required": ["id", "object", "name", "speaker", "description", "source", "has_reference_audio"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["voice"]},
            "name": {"type": "string"},
            "speaker": {"type": "integer", "minimum": 0},
            "description": {"type": "string"},
            "transcript": {"type": ["string", "null"], "description": "the words spoken in the reference clip"},
            "clip_s": {"type": ["number", "null"], "description": "the reference clip's length, whole 80 ms frames"},
            "frames": {"type": ["integer", "null"], "description": "Mimi frames of the reference clip"},
            "created": {"type": ["integer", "null"], "description": "unix time of the upload"},
            "source": {"type": "string", "enum": ["upload", "file"], "description": "`file`: a YAML voice file"},
            "has_reference_audio": {"type": "boolean"},
        },
    },
    "VoiceList": {
        "type": "object",
        "required": ["object", "voices"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "voices": {"type": "array", "items": {"$ref": "#/components/schemas/Voice"}},
        },
    },
    "VoiceDeleted": {
        "type": "object",
        "required": ["id", "object", "deleted"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["voice.deleted"]},
            "deleted": {"type": "boolean", "enum": [True]},
        },
    },
    "VoiceUpload": {
        "type": "object",
        "required": ["name", "audio", "transcript"],
        "properties": {
            "name": NAME_SCHEMA,
            "audio": {
                "type": "string",
                "format": "binary",
                "description": "The reference clip: WAV, FLAC, OGG or any format libsndfile reads; 1 to 30 s once "
                "decoded (5 to 15 s of one clean speaker works best). Mixed to mono, resampled to 24 kHz, trimmed "
                "to whole 80 ms frames and encoded with Mimi once.",
            },
            "transcript": {
                "type": "string",
                "minLength": 1,
                "maxLength": 1000,
                "pattern": SPEAKABLE_PATTERN,
                "description": "The exact words spoken in the clip.",
            },
            "speaker": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "default": 0},
            "description": {"type": "string", "maxLength": 500, "default": ""},
            "replace": {
                "type": "string",
                "enum": ["true", "false"],
                "default": "false",
                "description": "`true` replaces an uploaded voice of the same name.",
            },
        },
    },
}
VOICE_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {"$ref": "#/components/schemas/VoiceUpload"}}},
    }
}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


def path_responses(error, upload_max_bytes: int) -> dict[tuple[str, str], dict]:
    """(path, method) -> responses, for openapi.PATH_RESPONSES; `error` builds an error response."""
    voice = "#/components/schemas/Voice"
    not_found = error("No such voice (`voice_not_found`).")
    return {
        ("/v1/voices", "post"): {
            201: _json(voice, "The voice, stored and ready to speak with."),
            400: error(
                "A bad field: `invalid_name`, `missing_transcript`, `invalid_audio` (not audio, undecodable), "
                "`invalid_length` (under 1 s or over 30 s; the message gives the length), `invalid_value`."
            ),
            409: error(
                "`voice_exists` (send replace=true), `voice_read_only` (a voice file's name) or `too_many_voices`."
            ),
            413: error(f"The upload is larger than {upload_max_bytes} bytes (`file_too_large`)."),
            500: error("The voice could not be written to the server's disk."),
            503: error("The model is still loading (the clip is encoded with it), or shutting down.", "Retry-After"),
        },
        ("/v1/voices", "get"): {200: _json("#/components/schemas/VoiceList", "Every voice: files' and uploaded.")},
        ("/v1/voices/{voice_id}", "get"): {200: _json(voice, "The voice."), 404: not_found},
        ("/v1/voices/{voice_id}", "delete"): {
            200: _json("#/components/schemas/VoiceDeleted", "Deleted, with its files."),
            404: not_found,
            409: error("The voice comes from a voice file (`voice_read_only`)."),
            500: error("The voice's files could not be removed."),
        },
    }
