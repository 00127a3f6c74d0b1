"""Request and error bodies. Validation happens here, before any stream opens, so bad input is a 400, never a 500."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_INPUT_CHARS = 4096
# OpenAI's own model names are accepted as aliases of the model this server runs.
OPENAI_MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15")


class SpeechRequest(BaseModel):
    """OpenAI's `/v1/audio/speech` body, plus a few optional CSM generation knobs (sent via `extra_body`)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    voice: str = Field(min_length=1, max_length=100)
    instructions: str | None = Field(default=None, max_length=MAX_INPUT_CHARS)
    response_format: Literal["pcm", "wav", "flac", "mp3", "opus"] = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream: bool = True
    stream_format: Literal["audio"] = "audio"
    # CSM extensions; None = the server's setting.
    max_audio_ms: int | None = Field(default=None, ge=80, le=600_000)
    temperature: float | None = Field(default=None, gt=0.0, le=5.0)
    topk: int | None = Field(default=None, ge=1, le=2051)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error shape, so the `openai` package raises a typed error carrying our message."""

    error: ErrorDetail
