"""A streamed response that can end as cut short: the client must be able to tell a body that lost its end.

Once the status and headers are sent, the only honest way to say "this audio is incomplete" on a raw HTTP/1.1 body is
to withhold its last chunk: the connection is closed without the chunked encoding's terminator, and every client
reports an incomplete read (httpx: RemoteProtocolError, curl: exit 18, a browser's fetch: a network error). A body
iterator raises `StreamCut` for that; Starlette's own StreamingResponse would end the body cleanly instead.
"""

from __future__ import annotations

from starlette.responses import StreamingResponse
from starlette.types import Send


class StreamCut(Exception):
    """Raised by a body iterator: end the response without its final chunk (the server closes the connection)."""


class CuttableStreamingResponse(StreamingResponse):
    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self.body_iterator:
                if not isinstance(chunk, bytes | memoryview):
                    chunk = chunk.encode(self.charset)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except StreamCut:
            return  # no final chunk: uvicorn closes the connection of a response the app left incomplete
        await send({"type": "http.response.body", "body": b"", "more_body": False})
