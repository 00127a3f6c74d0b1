"""`GET /ready` (503 until the model is loaded and warmed up; while a first start downloads the checkpoint, how far it
has come; `HEAD /ready` answers the same status without the body) and `GET /metrics` (Prometheus); both need the
token."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from csm_runtime.engine.download import current as current_download

router = APIRouter(tags=["status"])


@router.head("/ready", include_in_schema=False)
@router.get("/ready")
async def ready(request: Request):
    state = request.app.state
    scheduler = state.scheduler
    if scheduler.state != "ready":
        body = {"status": scheduler.state}
        if scheduler.error is not None:
            body["error"] = f"{type(scheduler.error).__name__}: {scheduler.error}"
        elif (download := current_download()) is not None:  # a first start fetching the checkpoint: how far
            body["download"] = download
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    gen = scheduler.generator
    return {
        "status": "ready",
        "model": getattr(gen, "model_id", state.settings.model),
        "device": str(getattr(gen, "device", "")),
        "dtype": str(getattr(gen, "dtype", "")),
        "max_streams": scheduler.max_streams,
        "profile": state.profile,
        "warmup": scheduler.warmup_info,
    }


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
