"""`GET /health`: public liveness. 200 as long as the process answers, model loaded or not."""

from fastapi import APIRouter

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}
