"""uvicorn's settings for this server, with a deadline on request headers that uvicorn lacks.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but once a byte of a request has arrived it
waits for the rest forever: one header byte a second holds a connection (and its socket) open indefinitely, and a
few hundred such clients exhaust the server (slowloris). `GuardedH11Protocol` gives every request `header_timeout_s`
to deliver its headers, counted from the moment the connection began waiting for it (the connection opened, or the
previous response ended); past it the connection is closed. The same deadline ends a connection still trickling a
body nobody reads any more (the 401 or 413 was sent). The body of a request being served has its own deadline,
`body_timeout_s` (body_limit.py answers 408).

uvicorn is told to use this h11 protocol whatever else is installed (httptools would be picked by default).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("csm_runtime.server.connection")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose next request's headers are late."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._await_request()

    def _await_request(self) -> None:
        """Start the headers' clock; a request whose headers arrive in time replaces `self.cycle`."""
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late, self.cycle)

    def _headers_late(self, waiting_after) -> None:
        self._header_timer = None
        if self.cycle is waiting_after and not self.transport.is_closing():
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.info("closing the connection from %s: no complete request in %g s", peer, self.header_timeout_s)
            self.transport.close()

    def on_response_complete(self) -> None:
        self._await_request()  # before the parent runs a pipelined request, which replaces self.cycle
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)


def guarded_protocol(header_timeout_s: float) -> type[GuardedH11Protocol]:
    """The protocol class with this deadline (uvicorn instantiates the class it is given)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": float(header_timeout_s)})


def uvicorn_config(app, settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn.Config `csm-runtime serve` runs `app` with: the bind, the graceful drain and the header deadline
    from `settings`; `overrides` add or replace uvicorn options (TLS files, log level, a test's port)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "lifespan": "on",
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s),
        "http": guarded_protocol(settings.header_timeout_s),
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
