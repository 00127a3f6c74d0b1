"""`GET /health` (and `HEAD`, which health checkers send): public liveness. 200 as long as the process answers,
model loaded or not."""

from fastapi import APIRouter

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.head("/health", include_in_schema=False)
async def health_head() -> dict:
    return await health()
