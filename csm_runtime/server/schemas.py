"""Request and error bodies. Validation happens here, before any stream opens, so bad input is a 400, never a 500.

What the schema says is what the server accepts (openapi.py publishes it): floats must be finite, `input` must hold a
character to speak (the pattern is the server's own rule, engine/sentences.py), `speed` is 1.0 only, a `temperature`
below MIN_TEMPERATURE is refused. The accepted `model` and `voice` values are published as enums by openapi.py from
what this server runs; the route checks them (400 with the list), because they are known only at start-up.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from csm_runtime.engine.sentences import SPEAKABLE_PATTERN, is_speakable
from csm_runtime.server.body_limit import CONTEXT_BODY_BYTES

MAX_INPUT_CHARS = 4096
MAX_AUDIO_MS = 600_000
MIN_TEMPERATURE = 0.01  # below it logits / temperature overflows: no usable sampling distribution
MAX_BODY_BYTES = 1 << 20  # request bodies above this are refused (413) before they are parsed
# OpenAI's own model names are accepted as aliases of the model this server runs.
OPENAI_MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15")
FORMATS = ("pcm", "wav", "flac", "mp3", "opus")


def _integral(value):
    """JSON Schema's `integer` includes 80.0; strict mode would refuse it. Booleans and strings stay refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def json_int(ge: int, le: int):
    """An integer in [ge, le] as JSON Schema counts integers (80.0 is one)."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_integral)]


MAX_CONTEXT_ITEMS = 32
# A conversation id, as a voice name: 1 to 64 letters, digits, `_`, `.`, `-`, but not `.` or `..` (a URL path
# would resolve them)
ID_PATTERN = r"^(?:[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}|\.[A-Za-z0-9_-][A-Za-z0-9_.-]{0,62}|\.\.[A-Za-z0-9_.-]{1,62})$"
MAX_SPEAKER = 2**31 - 1
AUDIO_FIELD = {"contentEncoding": "base64", "contentMediaType": "audio/wav"}


class _Turn(BaseModel):
    """What a party said: `text` by `speaker`, with its audio as a base64 audio file, or text only."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    speaker: json_int(0, MAX_SPEAKER)
    text: str = Field(min_length=1, max_length=MAX_INPUT_CHARS, json_schema_extra={"pattern": SPEAKABLE_PATTERN})
    audio: str | None = Field(
        default=None,
        min_length=1,
        max_length=CONTEXT_BODY_BYTES,
        description="The turn's audio: a WAV (or any file libsndfile reads) in base64, 0.08 to 30 s.",
        json_schema_extra=AUDIO_FIELD,
    )

    @field_validator("text")
    @classmethod
    def _speakable(cls, value: str) -> str:
        if not is_speakable(value):
            raise PydanticCustomError(
                "empty_text", "must contain some text, not only whitespace, control or zero-width characters"
            )
        return value


class ContextItem(_Turn):
    """An earlier turn given as context, with its audio (`audio`), a voice's reference clip standing for it
    (`voice`: the voice's stored clip and transcript; `text` is used when the voice has no clip), or text only."""

    model_config = ConfigDict(json_schema_extra={"not": {"required": ["voice", "audio"]}})

    voice: str | None = Field(default=None, min_length=1, max_length=100, description="A voice's name.")

    @model_validator(mode="after")
    def _one_source(self):
        if {"voice", "audio"} <= self.model_fields_set:  # as the schema's `not`: both keys, even one null
            raise PydanticCustomError("voice_and_audio", "give `voice` or `audio`, not both")
        return self


class TurnRequest(_Turn):
    """`POST /v1/conversations/{id}/turns`: the other party's turn (audio and its transcript, or text only)."""


class ConversationTurn(BaseModel):
    speaker: int
    text: str
    frames: int = Field(description="Audio frames (80 ms each) of the turn's stored codes; 0 for a text-only turn.")
    source: Literal["generated", "added"]
    created: int = Field(description="Unix time.")


class ConversationOut(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    turns: list[ConversationTurn]
    frames: int = Field(description="Audio frames of all its turns.")
    expires_at: int = Field(description="Unix time it expires unless used again.")


class ConversationDeleted(BaseModel):
    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: Literal[True] = True


class SpeechRequest(BaseModel):
    """OpenAI's `/v1/audio/speech` body, plus a few optional CSM generation knobs (sent via `extra_body`)."""

    # strict: `"seed": false`, `"stream": 1` or `"speed": "1"` are refused, as the schema's types say.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)

    model: str = Field(min_length=1, max_length=200, description="GET /v1/models lists the accepted names.")
    input: str = Field(
        min_length=1,
        max_length=MAX_INPUT_CHARS,
        description="The text to speak. Long text is split into sentences and streamed as one response. It needs "
        "one visible character: whitespace, control and zero-width characters do not count and are removed.",
        json_schema_extra={"pattern": SPEAKABLE_PATTERN},
    )
    voice: str = Field(min_length=1, max_length=100, description="GET /v1/voices lists the voices.")
    instructions: str | None = Field(
        default=None, max_length=MAX_INPUT_CHARS, description="Accepted for compatibility; CSM ignores it."
    )
    response_format: Literal["pcm", "wav", "flac", "mp3", "opus"] = Field(
        default="mp3", description="`pcm` is raw 16-bit little-endian mono at 24 kHz."
    )
    speed: float = Field(
        default=1.0,
        description="Only 1.0: CSM speaks at its own pace and the server does not time-stretch audio.",
        json_schema_extra={"minimum": 1.0, "maximum": 1.0},
    )
    stream: bool = Field(default=True, description="false: the whole file in one body (a WAV with its real sizes).")
    stream_format: Literal["audio", "sse"] = Field(
        default="audio",
        description="`audio`: the file's bytes as they are made. `sse`: `speech.audio.delta` events carrying "
        "base64 chunks of the same file, then one `speech.audio.done` event.",
    )
    # CSM extensions; None = the server's setting.
    max_audio_ms: json_int(80, MAX_AUDIO_MS) | None = Field(
        default=None, description="Cap on the audio length (the server's cap still applies)."
    )
    temperature: float | None = Field(default=None, ge=MIN_TEMPERATURE, le=5.0)
    topk: json_int(1, 2051) | None = None
    seed: json_int(0, 2**31 - 1) | None = None
    context: list[ContextItem] | None = Field(
        default=None,
        max_length=MAX_CONTEXT_ITEMS,
        description="Earlier turns, oldest first, spoken before `input` (after the voice's reference clip). The "
        "oldest are dropped first beyond the server's context budget (`max_context_frames`).",
    )
    conversation: str | None = Field(
        default=None,
        description="A conversation id: its earlier turns are context (newest kept first within the budget), and "
        "this response, once complete, becomes its next turn. An unknown id starts a conversation.",
        pattern=ID_PATTERN,
    )

    @field_validator("input")
    @classmethod
    def _speakable(cls, value: str) -> str:
        if not is_speakable(value):
            raise PydanticCustomError(
                "empty_input", "must contain some text to speak, not only whitespace, control or zero-width characters"
            )
        return value

    @field_validator("speed")
    @classmethod
    def _speed(cls, value: float) -> float:
        if value != 1.0:
            raise PydanticCustomError(
                "unsupported_speed",
                "{speed} is not supported: CSM speaks at its own pace and this server does not time-stretch audio "
                "(it would distort the voice); send 1.0",
                {"speed": value},
            )
        return value


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error shape, so the `openai` package raises a typed error carrying our message."""

    error: ErrorDetail
