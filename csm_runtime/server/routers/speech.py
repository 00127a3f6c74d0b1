"""`POST /v1/audio/speech`: OpenAI's speech endpoint, streamed as the frames are generated.

Everything that can be wrong with a request is checked before a byte is sent (model, voice, format, speed,
generation params, queue room), and the response starts only once the first chunk exists, so queueing problems
(timeout, shutdown, a refused stream) still get a proper status. After that, chunks are encoded and sent as they
come; a client that goes away cancels its stream at once (Starlette cancels the body iterator on disconnect, and the
iterator also checks `is_disconnected()` while it waits).

Long text is split into sentences (engine/sentences.py) and said as one stream, each sentence with the previous ones
as context (the scheduler's ticket spans them). `stream_format: sse` wraps the same bytes in OpenAI's speech events:
`data: {"type": "speech.audio.delta", "audio": "<base64>"}` per chunk, then `data: {"type": "speech.audio.done",
"usage": {...}}`; an error after the stream began is a last `data: {"type": "error", "error": {...}}` event.

The prompt's context (server/context.py) is the voice's reference clip, then the turns of the request's
`conversation`, then its own `context` items, the oldest dropped first beyond the budget; a response that completes
(all its audio made, the audio cap included; not cut, cancelled or failed) is appended to its conversation as a turn
with the codes it generated, so the next request uses them without encoding anything again.

A stream that ends early says so. Cut short (the request timeout, a shutdown's grace running out, a generation
failure): a raw body ends without its final chunk, so the client's read fails (streaming.py), and SSE ends with an
`error` event, never `speech.audio.done`. Ended by the audio cap (`max_audio_ms`, the request's or the server's)
before the text was all said: the done event carries `"truncated": "max_audio_ms"`, a whole body the header
`X-Audio-Truncated: max_audio_ms`. A raw stream has sent its headers before it knows; it ends complete.
"""

from __future__ import annotations

import base64
import json
import logging
from functools import partial

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from csm_runtime.engine.longtext import limits_of
from csm_runtime.engine.sentences import speech_pieces
from csm_runtime.engine.types import GenerationParams
from csm_runtime.server import context as ctx
from csm_runtime.server.audio_formats import Encoder, to_int16, wav_header
from csm_runtime.server.conversations import make_turn
from csm_runtime.server.errors import APIError
from csm_runtime.server.jobs import NotReadyError, QueueFullError, ShuttingDownError, StreamFailedError, Ticket
from csm_runtime.server.openapi import SPEECH_RESPONSES
from csm_runtime.server.routers.models import served_model_ids
from csm_runtime.server.schemas import SpeechRequest
from csm_runtime.server.streaming import CuttableStreamingResponse, StreamCut

router = APIRouter(tags=["speech"])
log = logging.getLogger("csm_runtime.server.speech")
POLL_S = 0.25  # how often a waiting request checks whether its client is still there
FRAME_SAMPLES = 1920
TRUNCATED = "max_audio_ms"  # what X-Audio-Truncated and the done event's `truncated` say: the cap that ended it


class _ClientGone(Exception):
    pass


def build_params(settings, req: SpeechRequest) -> GenerationParams:
    """GenerationParams from the server's settings, narrowed by the request's optional CSM fields."""
    max_ms = settings.max_audio_ms if req.max_audio_ms is None else min(req.max_audio_ms, settings.max_audio_ms)
    params = GenerationParams(
        max_audio_ms=max_ms,
        temperature=settings.temperature if req.temperature is None else req.temperature,
        topk=settings.topk if req.topk is None else req.topk,
        greedy=False,
        seed=req.seed,
        first_chunk_frames=settings.first_chunk_frames,
        chunk_frames=settings.chunk_frames,
    )
    params.validate()
    return params


def _not_ready(state, exc: Exception) -> APIError:
    state.metrics.rejected.labels("not_ready").inc()
    return APIError(503, str(exc), code="not_ready", headers={"Retry-After": "5"})


async def _context(state, req: SpeechRequest, voice, pieces: list[str], params) -> list:
    """The prompt's context (server/context.py): the voice's reference, the conversation's turns, the request's
    items; a client's clip is encoded here, before the request queues."""
    turns = state.conversations.use(req.conversation) if req.conversation else []
    history = ctx.turn_parts(turns) + await ctx.request_parts(req.context, state.voices)
    limits = limits_of(state.scheduler.generator)
    kept = ctx.fit(ctx.parts(voice.context), history, pieces, voice.speaker, params, limits)
    try:
        return await ctx.encode_kept(state.scheduler, kept)
    except (NotReadyError, ShuttingDownError) as exc:
        raise _not_ready(state, exc) from None


def _save_turn(state, req: SpeechRequest, speaker: int, pieces: list[str], ticket: Ticket) -> None:
    """A complete response becomes its conversation's next turn: the text said and the codes generated."""
    if not req.conversation or ticket.reason not in ("eos", "max_audio"):
        return
    codes = np.concatenate(ticket.codes).T if ticket.codes else None
    said = pieces[: max(1, ticket.pieces_started)]  # the audio cap may have ended it before the last sentences
    state.conversations.append(req.conversation, make_turn(speaker, " ".join(said), codes, "generated"))


def _check(request: Request, req: SpeechRequest):
    """The model and voice checks that need the server's tables (the schema publishes them as enums)."""
    if req.model not in served_model_ids(request):
        raise APIError(
            400,
            f"unknown model {req.model!r}; this server runs {request.app.state.settings.model!r} "
            f"(GET /v1/models lists accepted names)",
            param="model",
            code="model_not_found",
        )
    voices = request.app.state.voices
    voice = voices.get(req.voice)
    if voice is None:
        raise APIError(
            400, f"unknown voice {req.voice!r}; available: {', '.join(voices)}", param="voice", code="voice_not_found"
        )
    return voice


async def _next(ticket: Ticket, request: Request):
    """Next chunk (None at the end), checking between polls that the client is still connected."""
    while True:
        try:
            return await ticket.next(timeout=POLL_S)
        except TimeoutError:
            if await request.is_disconnected():
                raise _ClientGone from None


def _end_error(reason: str | None, timeout_s: float, started: bool = False) -> APIError | None:
    """The error for a stream the scheduler ended early (None when it ended as asked)."""
    if reason == "timeout":
        when = "; the audio was incomplete" if started else " before any audio (server busy)"
        return APIError(504, f"request timed out after {timeout_s:g} s{when}", code="timeout")
    if reason == "shutdown":
        return APIError(503, "server is shutting down", code="shutting_down", headers={"Retry-After": "5"})
    return None


def _sse_error(err: APIError) -> bytes:
    detail = {"message": err.message, "type": "timeout" if err.status == 504 else "server_error", "param": None}
    return _sse({"type": "error", "error": {**detail, "code": err.code}})


def _sse(event: dict) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def _delta(data: bytes) -> bytes:
    return _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}) if data else b""


@router.post("/v1/audio/speech", response_class=Response, responses=SPEECH_RESPONSES)
async def create_speech(req: SpeechRequest, request: Request):
    """Speak `input` in `voice`: the audio streams as it is generated; long text is said sentence by sentence."""
    state = request.app.state
    voice = _check(request, req)
    try:
        params = build_params(state.settings, req)
    except ValueError as exc:
        raise APIError(400, f"invalid generation parameters: {exc}", code="invalid_value") from None
    pieces = speech_pieces(req.input)
    if not pieces:  # the schema's pattern already refuses this; kept for text that only cleaning empties
        raise APIError(400, "input: must contain some text to speak", param="input", code="invalid_value")
    context = await _context(state, req, voice, pieces, params)
    try:
        ticket = state.scheduler.submit(pieces, voice.speaker, context, params)
    except QueueFullError as exc:
        state.metrics.rejected.labels("queue_full").inc()
        raise APIError(429, str(exc), code="queue_full", headers={"Retry-After": str(exc.retry_after_s)}) from None
    except (NotReadyError, ShuttingDownError) as exc:
        raise _not_ready(state, exc) from None
    complete = partial(_save_turn, state, req, voice.speaker, pieces, ticket)  # once the audio is all there
    state.metrics.touch_activity()  # accepted: real work, which keeps the box's watchdog from idling it out
    rate = int(state.scheduler.generator.sample_rate)
    encoder = Encoder(req.response_format, rate)

    try:
        first = await _next(ticket, request)
    except _ClientGone:
        ticket.cancel()
        encoder.close()
        state.metrics.touch_activity()
        return Response(status_code=499)
    except StreamFailedError as exc:
        encoder.close()
        state.metrics.touch_activity()
        raise APIError(400 if exc.bad_input else 500, f"generation failed: {exc}", code="generation_failed") from None
    err = _end_error(ticket.reason, state.settings.request_timeout_s) if first is None else None
    if err is not None:
        encoder.close()
        state.metrics.touch_activity()
        raise err

    headers = {"X-Sample-Rate": str(rate), "Cache-Control": "no-store"}
    sse = req.stream_format == "sse"
    if not req.stream and not sse:
        try:
            return await _whole(ticket, request, encoder, first, headers, complete)
        finally:
            state.metrics.touch_activity()
    timeout_s = state.settings.request_timeout_s

    async def body():
        done = first is None
        frames = 0
        try:
            if not done:
                frames += len(first) // FRAME_SAMPLES
                data = encoder.encode(first)
                yield _delta(data) if sse else data
            while not done:
                chunk = await _next(ticket, request)
                if chunk is None:
                    break
                frames += len(chunk) // FRAME_SAMPLES
                data = encoder.encode(chunk)
                if data:
                    yield _delta(data) if sse else data
            err = _end_error(ticket.reason, timeout_s, started=True)
            if err is not None:
                log.warning("stream cut short (%s) after %d frames", ticket.reason, frames)
                if not sse:
                    raise StreamCut
                yield _sse_error(err)
                return
            tail = encoder.finish()
            complete()
            if sse:
                usage = {
                    "input_tokens": len(req.input),
                    "output_tokens": frames,
                    "total_tokens": len(req.input) + frames,
                }
                done_event = {"type": "speech.audio.done", "usage": usage}
                if ticket.reason == "max_audio":
                    done_event["truncated"] = TRUNCATED
                yield _delta(tail) + _sse(done_event)
            else:
                yield tail
        except _ClientGone:
            log.info("client disconnected; stream cancelled")
        except StreamFailedError as exc:  # mid-stream: the status is sent already, so the body ends as cut
            log.warning("stream failed mid-way: %s", exc)
            if not sse:
                raise StreamCut from None
            yield _sse_error(APIError(500, f"generation failed: {exc}", code="generation_failed"))
        finally:
            ticket.cancel()  # no-op when it ended normally; frees the slot when the client went away
            encoder.close()
            state.metrics.touch_activity()  # a stream that ran for minutes is activity until its end

    media_type = "text/event-stream" if sse else encoder.media_type
    return CuttableStreamingResponse(body(), media_type=media_type, headers=headers)


async def _whole(ticket: Ticket, request: Request, encoder: Encoder, first, headers: dict, complete) -> Response:
    """`stream: false`: the same generation, sent as one body (a WAV then carries its real sizes). Nothing is sent
    before the end, so a stream ended early is an error status, and one the audio cap ended says so in a header."""
    parts = []
    try:
        chunk = first
        while chunk is not None:
            parts.append(chunk)
            chunk = await _next(ticket, request)
    except _ClientGone:
        encoder.close()
        return Response(status_code=499)
    except StreamFailedError as exc:
        encoder.close()
        raise APIError(500, f"generation failed: {exc}", code="generation_failed") from None
    finally:
        ticket.cancel()
    err = _end_error(ticket.reason, request.app.state.settings.request_timeout_s, started=True)
    if err is not None:
        encoder.close()
        raise err
    complete()
    if ticket.reason == "max_audio":
        headers = {**headers, "X-Audio-Truncated": TRUNCATED}
    if encoder.format == "wav":
        encoder.close()
        pcm = to_int16(np.concatenate(parts)) if parts else b""
        data = wav_header(encoder.sample_rate, len(pcm)) + pcm
    else:
        data = b"".join(encoder.encode(p) for p in parts) + encoder.finish()
    return Response(data, media_type=encoder.media_type, headers=headers)
