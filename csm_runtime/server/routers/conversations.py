"""`/v1/conversations/{id}`: add the other party's turn, show a conversation, delete it.

A conversation is started by the first speech request or added turn that names its id (server/conversations.py
keeps them in memory, bounded, expiring when idle). An added turn's clip is decoded off the event loop and encoded
with Mimi once, on the engine thread; its codes are what later requests use as context.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Request

from csm_runtime.engine.sentences import clean
from csm_runtime.server.clips import ClipError, decode_base64_clip, encode_clip
from csm_runtime.server.context import CLIP_MAX_S, CLIP_MIN_S
from csm_runtime.server.conversations import Conversation, make_turn
from csm_runtime.server.errors import APIError
from csm_runtime.server.jobs import NotReadyError, ShuttingDownError
from csm_runtime.server.openapi import error
from csm_runtime.server.schemas import ID_PATTERN, ConversationDeleted, ConversationOut, TurnRequest

router = APIRouter(tags=["conversations"])
ConversationId = Annotated[str, Path(pattern=ID_PATTERN, description="1 to 64 of A-Z a-z 0-9 _ . - (not `.` or `..`).")]
BAD_ID = error("Invalid request: bad JSON, a value outside the schema (the id included), audio that cannot be used.")
NOT_FOUND = error("No such conversation (never started, expired, evicted or deleted).")
TURN_RESPONSES = {
    400: BAD_ID,
    408: error("The request body did not arrive within the server's body timeout."),
    413: error("Request body too large."),
    503: error("The model is still loading or warming up, or the server is shutting down.", "Retry-After"),
}


def public(store, conv: Conversation) -> ConversationOut:
    return ConversationOut(
        id=conv.id,
        turns=[t.public() for t in conv.turns],
        frames=conv.frames,
        expires_at=store.expires_at(conv),
    )


@router.post("/v1/conversations/{conversation_id}/turns", status_code=201, responses=TURN_RESPONSES)
async def add_turn(conversation_id: ConversationId, body: TurnRequest, request: Request) -> ConversationOut:
    """Add the other party's turn (its audio and transcript, or text only); an unknown id starts a conversation."""
    state = request.app.state
    codes = None
    if body.audio is not None:
        try:
            wav = await asyncio.to_thread(decode_base64_clip, body.audio, min_s=CLIP_MIN_S, max_s=CLIP_MAX_S)
        except ClipError as exc:
            raise APIError(exc.status, exc.message, param="audio", code=exc.code) from None
        try:
            codes = await encode_clip(state.scheduler, wav)
        except (NotReadyError, ShuttingDownError) as exc:
            raise APIError(503, str(exc), code="not_ready", headers={"Retry-After": "5"}) from None
    store = state.conversations
    conv = store.append(conversation_id, make_turn(body.speaker, clean(body.text).strip(), codes, "added"))
    return public(store, conv)


@router.get("/v1/conversations/{conversation_id}", responses={400: BAD_ID, 404: NOT_FOUND})
async def get_conversation(conversation_id: ConversationId, request: Request) -> ConversationOut:
    """The conversation's turns (text, speaker, frames of audio, generated or added) and when it expires."""
    store = request.app.state.conversations
    conv = store.get(conversation_id)
    if conv is None:
        raise APIError(404, f"no conversation {conversation_id!r}", code="conversation_not_found")
    return public(store, conv)


@router.delete("/v1/conversations/{conversation_id}", responses={400: BAD_ID, 404: NOT_FOUND})
async def delete_conversation(conversation_id: ConversationId, request: Request) -> ConversationDeleted:
    """Forget the conversation and its turns."""
    if not request.app.state.conversations.delete(conversation_id):
        raise APIError(404, f"no conversation {conversation_id!r}", code="conversation_not_found")
    return ConversationDeleted(id=conversation_id)
