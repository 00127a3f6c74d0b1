"""`GET /v1/models`: the model this server runs, plus the OpenAI names accepted as aliases for it."""

from fastapi import APIRouter, Request

from csm_runtime.server.errors import APIError
from csm_runtime.server.openapi import NOT_FOUND
from csm_runtime.server.schemas import OPENAI_MODEL_ALIASES

router = APIRouter(tags=["models"])


def model_ids(served: str) -> list[str]:
    """Every `model` value /v1/audio/speech accepts: the served id first, then its aliases."""
    return list(dict.fromkeys([served, "csm-1b", *OPENAI_MODEL_ALIASES]))


def served_model_ids(request: Request) -> list[str]:
    return model_ids(request.app.state.settings.model)


def _model(model_id: str, served: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "csm-deploy", "root": served}


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    served = request.app.state.settings.model
    return {"object": "list", "data": [_model(m, served) for m in served_model_ids(request)]}


@router.get("/v1/models/{model_id:path}", responses=NOT_FOUND)
async def get_model(model_id: str, request: Request) -> dict:
    if model_id not in served_model_ids(request):
        raise APIError(404, f"unknown model {model_id!r}", param="model", code="model_not_found")
    return _model(model_id, request.app.state.settings.model)
