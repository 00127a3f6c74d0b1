"""The bearer token, checked from the headers alone before anything reads the request body (pure ASGI, outside the
body limit): an unauthenticated request gets its 401 without the server buffering or parsing a byte of its body, so
a stranger's large or malformed body costs nothing and says nothing about the API's validation.

Public without the token: `/health` and the playground page (`/`, `/static/*`), which hold no data. Every other path
needs it, an unknown one included (a stranger learns no route names from 404s). The routes behind it check the token
again (dependencies.require_bearer), which also declares the scheme in the OpenAPI document.
"""

from __future__ import annotations

from csm_runtime.server.dependencies import bearer_error
from csm_runtime.server.errors import error_response

PUBLIC_PATHS = frozenset({"/health", "/"})
PUBLIC_PREFIXES = ("/static/",)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class BearerGate:
    def __init__(self, app, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.token is None or is_public(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        header = b""
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                header = value
                break
        err = bearer_error(header.decode("latin-1"), self.token)
        if err is None:
            await self.app(scope, receive, send)
            return
        response = error_response(err.status, err.message, code=err.code, headers=err.headers)
        await response(scope, receive, send)
