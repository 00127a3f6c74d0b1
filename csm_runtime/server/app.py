"""`create_app(settings)`: wires routers, auth, errors and metrics; lifespan starts the scheduler (which loads the
model and warms up on its own thread, so /health and /ready answer meanwhile) and drains it on shutdown.

Public: `/health`, and the playground page (`/` and `/static/*`: it holds no data and asks for the token). Everything
else needs the bearer token, `/openapi.json` included, checked from the headers before a byte of the body is read
(gate.py). Then request bodies over MAX_BODY_BYTES get 413 before parsing, and one that stalls gets 408
(body_limit.py). Every response, those included, is counted and timed per route (metrics.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse

from csm_runtime.server import errors, openapi
from csm_runtime.server.body_limit import BodyLimit, path_limits
from csm_runtime.server.conversations import ConversationStore
from csm_runtime.server.dependencies import read_token, require_bearer
from csm_runtime.server.gate import BearerGate
from csm_runtime.server.metrics import Metrics, RequestMetrics
from csm_runtime.server.openapi import UNAUTHORIZED
from csm_runtime.server.routers import conversations, health, models, page, speech, status, voices
from csm_runtime.server.scheduler import Scheduler
from csm_runtime.server.schemas import MAX_BODY_BYTES
from csm_runtime.server.voice_store import VoiceStore, store_dir
from csm_runtime.server.voices import add_uploaded_voices, encode_file_voices, load_voices
from csm_runtime.settings import RuntimeSettings

log = logging.getLogger("csm_runtime.server")


def default_loader(settings: RuntimeSettings) -> Callable[[], Any]:
    """The production loader: the real StreamingGenerator for `settings.model` (runs on the scheduler thread)."""

    def load():
        # torch and transformers load here, on the scheduler thread: importing the app (tests with a fake loader,
        # `csm-runtime serve --help`) stays light, and /health answers while they load.
        from csm_runtime.engine.loader import load_generator

        return load_generator(settings.model, settings=settings)

    return load


def create_app(
    settings: RuntimeSettings,
    *,
    loader: Callable[[], Any] | None = None,
    profile: Any = None,
) -> FastAPI:
    """Build the app. `loader` returns a generator (default: `load_generator(settings.model)`); `profile` is what
    /ready reports (the profile path or name the settings came from, or None). Bad voices or token files raise here,
    before the server binds."""
    token = read_token(settings.token_file)
    voice_table = load_voices(settings.voices_dir)
    voice_store = VoiceStore(store_dir(settings))
    add_uploaded_voices(voice_table, voice_store)
    load_generator = loader or default_loader(settings)
    metrics = Metrics()

    def load():
        gen = load_generator()
        encode_file_voices(voice_table, gen)
        return gen

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler = Scheduler(
            load, queue_size=settings.queue_size, request_timeout_s=settings.request_timeout_s, metrics=metrics
        )
        app.state.scheduler = scheduler
        scheduler.start()
        log.info(
            "loading %s (max_streams=%s, queue_size=%s)", settings.model, settings.max_streams, settings.queue_size
        )
        try:
            yield
        finally:
            log.info("shutting down: draining streams (grace %.0f s)", settings.shutdown_grace_s)
            await asyncio.to_thread(scheduler.stop, settings.shutdown_grace_s)

    app = FastAPI(
        title="csm-runtime",
        version="0.1.0",
        description="OpenAI-compatible streaming speech (Sesame CSM). Every operation here but /health needs the "
        "bearer token (the playground page at / is public and not part of the API).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind the token
    )
    app.state.settings = settings
    app.state.token = token
    app.state.voices = voice_table
    app.state.voice_store = voice_store
    app.state.metrics = metrics
    app.state.conversations = ConversationStore(
        ttl_s=settings.conversation_ttl_s,
        max_count=settings.max_conversations,
        max_bytes=settings.conversations_max_mb << 20,
    )
    metrics.watch_conversations(app.state.conversations)
    app.state.profile = profile
    errors.install(app)
    # The last added runs first: metrics see every answer, the gate refuses strangers before the body is read.
    app.add_middleware(
        BodyLimit, max_bytes=MAX_BODY_BYTES, timeout_s=settings.body_timeout_s, limits=path_limits(settings)
    )
    app.add_middleware(BearerGate, token=token)
    app.add_middleware(RequestMetrics, metrics=metrics, routes=app.router.routes)
    openapi.install(app, models.model_ids(settings.model), settings)

    protected = APIRouter(dependencies=[Depends(require_bearer)], responses=UNAUTHORIZED)
    for module in (status, speech, models, voices, conversations):
        protected.include_router(module.router)

    @protected.get("/openapi.json", include_in_schema=False)
    async def openapi_json() -> JSONResponse:
        return JSONResponse(app.openapi())

    app.include_router(health.router)
    app.include_router(page.router)
    app.include_router(protected)
    return app
