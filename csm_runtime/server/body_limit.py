"""Request bodies above a limit get 413 before anything parses them, and a body that stalls gets 408 (pure ASGI,
so it runs before routing; the token gate runs before it, so only an authenticated body is ever read).

A declared `Content-Length` over the limit is refused without reading a byte; a chunked body is read up to the limit
and refused at the first byte past it. The whole body must arrive within `timeout_s` of its headers, or the request
ends with 408 and the connection is closed (a client sending one byte now and then holds nothing for long). A body
within the limit is handed to the app unchanged; after it, `receive` is the server's own again, so the app still
hears a client that disconnects.

The limit is per path: `limits` maps a path pattern (`{x}` stands for one path segment) to its own cap and the error
code its 413 carries, e.g. a voice upload's clip (`file_too_large`) or a speech body with base64 context audio;
every other path gets `max_bytes`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping

from csm_runtime.server.errors import error_response

CONTEXT_BODY_BYTES = 8 << 20  # a speech request or conversation turn may carry base64 reference audio


def path_limits(settings) -> dict[str, tuple[int, str]]:
    """The paths whose bodies may be larger than MAX_BODY_BYTES: pattern -> (bytes, 413 code)."""
    return {
        "/v1/voices": (settings.voice_upload_max_bytes, "file_too_large"),
        "/v1/audio/speech": (CONTEXT_BODY_BYTES, "request_too_large"),
        "/v1/conversations/{id}/turns": (CONTEXT_BODY_BYTES, "request_too_large"),
    }


def _compile(pattern: str) -> re.Pattern:
    return re.compile(
        "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in re.split(r"(\{[^}]*\})", pattern))
    )


class BodyLimit:
    def __init__(
        self,
        app,
        max_bytes: int,
        timeout_s: float = 30.0,
        limits: Mapping[str, tuple[int, str]] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.limits = [(_compile(p), size, code) for p, (size, code) in (limits or {}).items()]

    def limit_for(self, path: str) -> tuple[int, str]:
        """The cap and 413 code for a request path."""
        for pattern, size, code in self.limits:
            if pattern.fullmatch(path):
                return size, code
        return self.max_bytes, "request_too_large"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, code = self.limit_for(scope.get("path", ""))
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
            await self._refuse(scope, receive, send, max_bytes, code)
            return
        if declared == b"0" or scope.get("method") in ("GET", "HEAD", "OPTIONS") and declared is None:
            await self.app(scope, receive, send)
            return
        body, more, early = bytearray(), True, None
        try:
            async with asyncio.timeout(self.timeout_s):
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        early = message  # the client went away while sending
                        break
                    body.extend(message.get("body", b""))
                    more = message.get("more_body", False)
                    if len(body) > max_bytes:
                        break
        except TimeoutError:
            response = error_response(
                408,
                f"request body not received within {self.timeout_s:g} s",
                code="request_timeout",
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        if len(body) > max_bytes:
            await self._refuse(scope, receive, send, max_bytes, code)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return early or {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, max_bytes: int, code: str) -> None:
        response = error_response(413, f"request body is larger than {max_bytes} bytes", code=code, headers=None)
        await response(scope, receive, send)
