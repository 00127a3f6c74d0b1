"""`GET /v1/voices`: the voice table (name -> speaker id, whether it carries reference audio)."""

from fastapi import APIRouter, Request

router = APIRouter(tags=["voices"])


@router.get("/v1/voices")
async def list_voices(request: Request) -> dict:
    voices = request.app.state.voices
    return {"object": "list", "voices": [v.public() for v in voices.values()]}
