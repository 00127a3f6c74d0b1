"""A fleet of local tiny-random replicas behind the real HAProxy gateway, made and torn down through the real
`deploy` CLI: what the fleet, autoscale and fleet-voice tests each start from (one per test module)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import run_deploy
from tests.fakes.server_fixtures import free_port


@dataclass
class LocalFleet:
    home: Path
    env: dict[str, str]
    port: int
    provisioned: dict  # `deploy provision --json`
    gateway: str  # `deploy gateway start`'s stdout


@contextmanager
def local_fleet(
    home: Path, replicas: int, *, check_interval: str = "0.2", gateway_json: bool = False
) -> Iterator[LocalFleet]:
    """Provision `replicas` local replicas (CPU, one thread, 4 streams each, $0.5/h), start the gateway on a free
    port; on the way out stop the gateway and tear every rental down, whatever the test did."""
    env = {**os.environ, "DEPLOY_HOME": str(home), "DEPLOY_POLL_INTERVAL_S": "0.2", "CSM_DEVICE": "cpu",
           "CSM_CPU_THREADS": "1", "CSM_MAX_STREAMS": "4", "DEPLOY_LOCAL_RATE": "0.5"}  # fmt: skip
    env.pop("VAST_API_KEY", None)
    port = free_port()
    try:
        res = run_deploy(["provision", "--provider", "local", "--model", "tiny-random", "--no-autotune",
                          "--replicas", str(replicas), "--json"], env, timeout=240)  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        provisioned = json.loads(res.stdout)
        start = ["gateway", "start", "--port", str(port), "--check-interval", check_interval]
        res = run_deploy([*start, "--json"] if gateway_json else start, env)
        assert res.returncode == 0, res.stderr
        yield LocalFleet(home, env, port, provisioned, res.stdout)
    finally:
        run_deploy(["gateway", "stop", "--now"], env)
        run_deploy(["teardown", "--all", "--yes"], env)
