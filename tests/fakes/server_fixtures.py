"""Shared helpers for the server and client tests: a real uvicorn server in a thread, and an audio decoder."""

from __future__ import annotations

import io
import socket
import threading
import time

import numpy as np
import soundfile as sf
import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a daemon thread (lifespan on, real sockets). An app from
    `create_app` runs with the config `csm-runtime serve` gives it (server/connection_guard.py: the header
    deadline), on this port and with a 5 s drain."""

    def __init__(self, app, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        options = {"host": "127.0.0.1", "port": self.port, "log_level": "warning", "timeout_graceful_shutdown": 5}
        settings = getattr(getattr(app, "state", None), "settings", None)
        if settings is not None:
            from csm_runtime.server.connection_guard import uvicorn_config

            config = uvicorn_config(app, settings, **options)
        else:
            config = uvicorn.Config(app, lifespan="on", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def wait_ready(client, timeout: float = 120.0) -> dict:
    """Poll /ready until 200 (model loaded and warmed up); `client` is an httpx.Client with auth set."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/ready")
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 503, r.text
        if r.json().get("status") == "failed":
            raise RuntimeError(r.text)
        time.sleep(0.05)
    raise TimeoutError("server not ready")


def decode(data: bytes, fmt: str, sample_rate: int = 24_000) -> np.ndarray:
    """Decode a response body to float32 samples. Reads frame blocks until EOF instead of trusting the header's
    length, since a streamed file says 'length unknown' (and soundfile's read() would trust it)."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0
    f = sf.SoundFile(io.BytesIO(data))
    assert f.samplerate == sample_rate and f.channels == 1
    parts, buf = [], np.empty(8192, dtype=np.float32)
    ptr = sf._ffi.cast("float *", buf.ctypes.data)
    while n := sf._snd.sf_readf_float(f._file, ptr, len(buf)):
        parts.append(buf[:n].copy())
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
