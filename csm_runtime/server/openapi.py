"""The OpenAPI document, made to say exactly what the server does.

FastAPI writes most of it from the routes; this module adds what it cannot know or gets wrong: validation errors are
400 (not 422) in OpenAI's error shape; every status a route can answer, with its headers (`Retry-After` on 429 and
503, `WWW-Authenticate` on 401); audio and Prometheus content types; the accepted `model` values as an enum taken from what this server runs; and the
voices routes with their multipart upload (openapi_voices.py). `voice` is a plain string: voices come and go while
the server runs. `/openapi.json` itself needs the token, like the API it describes.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from csm_runtime.server import openapi_voices
from csm_runtime.server.audio_formats import MEDIA_TYPES
from csm_runtime.server.body_limit import CONTEXT_BODY_BYTES
from csm_runtime.server.schemas import ErrorBody


def error(description: str, *headers: str) -> dict[str, Any]:
    """A documented error response: OpenAI's error body, plus the headers it always carries."""
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    if headers:
        out["headers"] = {name: HEADERS[name] for name in headers}
    return out


HEADERS = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1}},
    "WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}},
    "X-Audio-Truncated": {
        "description": "On a whole body (`stream: false`): the audio cap (`max_audio_ms`, the request's or the "
        "server's) ended the audio before the text was all said.",
        "schema": {"type": "string", "enum": ["max_audio_ms"]},
    },
    "X-Sample-Rate": {"description": "The audio's sample rate (24000).", "schema": {"type": "integer"}},
}
UNAUTHORIZED = {401: error("Missing or wrong bearer token.", "WWW-Authenticate")}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
# One server-sent event (OpenAPI before 3.2 lets `schema` describe each event): `data` is a JSON object.
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"type": "string", "enum": ["speech.audio.delta", "speech.audio.done", "error"]},
                    "audio": {"type": "string", "contentEncoding": "base64", "description": "bytes of the audio file"},
                    "usage": {
                        "type": "object",
                        "description": "input_tokens: characters of input; output_tokens: audio frames (80 ms)",
                        "properties": {
                            k: {"type": "integer"} for k in ("input_tokens", "output_tokens", "total_tokens")
                        },
                    },
                    "truncated": {
                        "type": "string",
                        "enum": ["max_audio_ms"],
                        "description": "on `speech.audio.done`: the audio cap ended the audio before the text was "
                        "all said",
                    },
                    "error": {"$ref": "#/components/schemas/ErrorDetail"},
                },
            },
        },
    },
    "description": "`speech.audio.delta` events carry the audio file's bytes in base64, in order; one "
    "`speech.audio.done` event ends a complete stream (with `truncated` when the audio cap ended it); a stream cut "
    "short (request timeout, shutdown, a failure) ends with an `error` event instead.",
}
SPEECH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The audio, streamed as it is generated (`X-Sample-Rate` says the rate, 24000), in the "
        "`response_format`'s media type; `text/event-stream` with `stream_format: sse`. A raw stream cut short "
        "(request timeout, shutdown, a failure) ends without its final chunk: the client's read fails.",
        "headers": {name: HEADERS[name] for name in ("X-Sample-Rate", "X-Audio-Truncated")},
        "content": {
            **{media: _BINARY for media in dict.fromkeys(MEDIA_TYPES.values())},
            "text/event-stream": {"schema": SSE_EVENT},
        },
    },
    400: error("Invalid request: bad JSON, a value outside the schema, an unknown model or voice."),
    408: error("The request body did not arrive within the server's body timeout."),
    413: error(f"Request body larger than {CONTEXT_BODY_BYTES} bytes."),
    429: error("Every stream slot and the queue are full.", "Retry-After"),
    500: error("Generation failed inside the server."),
    503: error("The model is still loading or warming up, or the server is shutting down.", "Retry-After"),
    504: error("The request timed out: in the queue, or (`stream: false`) before its audio was complete."),
}
READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Loaded and warmed up: the model, device and batch size."},
    503: {
        "description": "Loading, warming up, or failed (then `error` says why).",
        "headers": {"Retry-After": HEADERS["Retry-After"]},
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string"}, "error": {"type": "string"}},
                }
            }
        },
    },
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text exposition.", "content": {"text/plain": {"schema": {"type": "string"}}}}
}
NOT_FOUND = {404: error("No such model.")}
# Routes whose responses are declared here rather than on the route (the status router is shared with /ready's
# download progress): (path, method) -> responses, merged over FastAPI's, a 200 content here replacing its own.
PATH_RESPONSES = {("/ready", "get"): READY_RESPONSES, ("/metrics", "get"): METRICS_RESPONSES}


def build(app: FastAPI, models: list[str], settings: Any) -> dict[str, Any]:
    """The document for this app: FastAPI's, with 422s gone, the model enum filled in and the voices routes'
    bodies and responses described."""
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    path_responses = {**PATH_RESPONSES, **openapi_voices.path_responses(error, settings.voice_upload_max_bytes)}
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, spec in path_responses.get((path, method), {}).items():
                responses[str(status)] = {**responses.get(str(status), {}), **spec}
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    error_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorBody"] = error_schema
    schemas.update(openapi_voices.SCHEMAS)
    props = schemas["SpeechRequest"]["properties"]
    props["model"]["enum"] = list(models)
    props["voice"]["description"] = (
        "A voice's name: one from the server's voice files or one uploaded with POST /v1/voices "
        "(GET /v1/voices lists them; an unknown name is a 400 `voice_not_found`)."
    )
    for param in doc["paths"]["/v1/models/{model_id}"]["get"].get("parameters", []):
        if param["name"] == "model_id":
            param["schema"]["enum"] = list(models)
    return doc


def install(app: FastAPI, models: list[str], settings: Any) -> None:
    """`app.openapi()` returns the document above (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, models, settings)
        return app.openapi_schema

    app.openapi = openapi
