"""A real HAProxy gateway in front of one replica, for the tests that check what reaches the replica through it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.gateway import process
from deploy.gateway.config import Backend, GatewayConfig, render
from deploy.gateway.files import Paths
from tests.fakes.server_fixtures import free_port


@dataclass(frozen=True)
class Gateway:
    url: str
    config: str  # the rendered HAProxy config
    paths: Paths


@contextmanager
def one_replica_gateway(home: Path, name: str, backend: Backend, client_token: str) -> Iterator[Gateway]:
    """HAProxy on a free loopback port in front of `backend`, checking it every 200 ms, stopped at the end (also when
    it did not come up: a master that started but never checked the replica is ended too)."""
    paths = Paths.for_fleet(home, name)
    port = free_port()
    cfg = GatewayConfig(
        client_token=client_token,
        sockets_dir=str(paths.sockets),
        state_file=str(paths.state_file),
        port=port,
        check_interval_ms=200,
    )
    text = render(cfg, [backend])
    try:
        process.start(
            paths, text, bind="127.0.0.1", port=port, secrets_=[client_token, backend.token], names=[backend.name]
        )
        yield Gateway(f"http://127.0.0.1:{port}", text, paths)
    finally:
        process.stop(paths, graceful=False)
