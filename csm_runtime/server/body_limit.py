"""Request bodies above a limit get 413 before anything parses them, and a body that stalls gets 408 (pure ASGI,
so it runs before routing; the token gate runs before it, so only an authenticated body is ever read).

A declared `Content-Length` over the limit is refused without reading a byte; a chunked body is read up to the limit
and refused at the first byte past it. The whole body must arrive within `timeout_s` of its headers, or the request
ends with 408 and the connection is closed (a client sending one byte now and then holds nothing for long). A body
within the limit is handed to the app unchanged; after it, `receive` is the server's own again, so the app still
hears a client that disconnects.
"""

from __future__ import annotations

import asyncio

from csm_runtime.server.errors import error_response


class BodyLimit:
    def __init__(self, app, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
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
                    if len(body) > self.max_bytes:
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
        if len(body) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return early or {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send) -> None:
        response = error_response(
            413, f"request body is larger than {self.max_bytes} bytes", code="request_too_large", headers=None
        )
        await response(scope, receive, send)
