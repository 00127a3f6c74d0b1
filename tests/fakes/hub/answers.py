"""A request as the stand-in records it, the response shape its handler writes, and the Hub's error texts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tests.fakes.hub.content import HubFile

INVALID_TOKEN = "Invalid credentials in Authorization header"
UNKNOWN_REPO_ANONYMOUS = "Invalid username or password."
UNKNOWN_REPO = "Repository not found"
GATED_ANONYMOUS = (
    "Access to model {repo} is restricted. You must have access to it and be authenticated to access it. Please log in."
)
GATED_OUTSIDER = (
    "Access to model {repo} is restricted and you are not in the authorized list. "
    "Visit {site}/{repo} to ask for access."
)
UNKNOWN_REVISION = "Invalid rev id: {revision}"
UNKNOWN_ENTRY = "Entry not found"
UNKNOWN_PAGE = "Sorry, we can't find the page you are looking for."


@dataclass
class HubRequest:
    """One request as the stand-in saw it. `authorized` says an Authorization header came; its value is not kept."""

    method: str
    host: str
    path: str  # without the query (the CDN's signature lives there)
    authorized: bool
    caller: str  # anonymous | granted | outsider | invalid
    status: int
    endpoint: str | None = None  # resolve | cdn | model_info | tree | whoami; None: not an endpoint it models
    repo: str | None = None
    file: str | None = None  # path in the repo (resolve, cdn, tree)
    sent: int = 0  # body bytes written


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: HubFile | None = None  # stream this file's bytes [start, end) instead of `body`
    start: int = 0
    end: int = 0
    endpoint: str | None = None  # resolve | cdn | model_info | tree | whoami; None: not an endpoint it models
    repo: str | None = None
    path_in_repo: str | None = None


def error(status: int, message: str, code: str | None = None, **headers: str) -> Response:
    """The Hub's refusal: `X-Error-Message` (and `X-Error-Code` when it gives one) plus a JSON `{"error"}` body."""
    out = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": message, **headers}
    if code:
        out["X-Error-Code"] = code
    return Response(status, out, json.dumps({"error": message}).encode())


def json_answer(data: object) -> Response:
    return Response(200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(data).encode())
