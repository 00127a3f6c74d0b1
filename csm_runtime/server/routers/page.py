"""The playground page: `GET /` and its static files, public (the page holds no data; it asks for the token,
which it reads from the URL fragment `#token=...`, never sent to a server, or from a field).

Static HTML + JavaScript, no CDN and no build step: the box may be offline. The page calls the API with relative
URLs, so it works on http or https, directly or behind the gateway. A strict Content-Security-Policy allows only this
origin's own scripts and requests. Recording from the microphone (the Voices panel) needs a secure context: https,
or a localhost address such as an SSH tunnel's.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from csm_runtime.server.errors import APIError

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# The page's modules (one job each, loaded as ES modules from this origin) and its stylesheet.
SCRIPTS = (
    "playground.js",
    "pg-common.js",
    "pg-audio.js",
    "pg-recorder.js",
    "pg-recorder-worklet.js",
    "pg-voices.js",
    "pg-conversation.js",
)
FILES = {**dict.fromkeys(SCRIPTS, "text/javascript"), "playground.css": "text/css"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; media-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["page"])


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> FileResponse:
    if name not in FILES:
        raise APIError(404, f"no static file {name!r}", code="not_found")
    return FileResponse(STATIC_DIR / name, media_type=f"{FILES[name]}; charset=utf-8", headers=HEADERS)
