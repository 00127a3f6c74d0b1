"""The fleet's gateway, from the ledger: which replicas it routes to and how it reaches each (its endpoint, or an SSH
tunnel kept open here), its config rendered and HAProxy started, reloaded or stopped accordingly."""

from __future__ import annotations

import time
from typing import Any

from deploy.errors import UsageError
from deploy.fleet.model import replica_cert, replica_token
from deploy.gateway import process
from deploy.gateway.binary import find_haproxy
from deploy.gateway.config import Backend, GatewayConfig, address_of, render
from deploy.gateway.files import Paths
from deploy.gateway.runtime_api import server_stats
from deploy.gateway.tokens import client_token
from deploy.ledger import Ledger
from deploy.ledger.fleets import ACTIVE, Fleet, FleetStore, Replica
from deploy.remote.tunnels import close_all, current, ensure
from deploy.settings import DeploySettings


def paths(settings: DeploySettings, fleet: Fleet) -> Paths:
    return Paths.for_fleet(settings.home_path, fleet.name)


def backends(settings: DeploySettings, fleet: Fleet, replicas: list[Replica]) -> list[Backend]:
    """Each active replica as HAProxy reaches it: its endpoint directly, or through an SSH tunnel kept open here."""
    p = paths(settings, fleet)
    out = []
    for r in replicas:
        if not r.endpoint:
            raise UsageError(
                f"replica {r.name} (rental {r.rental.id}) has no server endpoint (provisioned --no-runtime?)"
            )
        if r.needs_tunnel:
            p.make()
            port = ensure(p.dir, r.name, r.rental, settings.ssh_key_path)
            address = f"127.0.0.1:{port}"
        else:
            address = address_of(r.endpoint)
        out.append(Backend(r.name, address, replica_token(r), ca_file=replica_cert(r)))  # https: its pinned cert
    return out


def replica_url(settings: DeploySettings, fleet: Fleet, r: Replica) -> str | None:
    """Where this machine reaches the replica's server now (None: a tunnelled one whose tunnel is closed)."""
    if not r.endpoint:
        return None
    if r.needs_tunnel:
        port = current(paths(settings, fleet).dir, r.name)
        scheme = "https" if r.endpoint.startswith("https:") else "http"  # a public bind behind a tunnel is still TLS
        return f"{scheme}://127.0.0.1:{port}" if port else None
    return r.endpoint


def render_for(settings: DeploySettings, store: FleetStore, fleet: Fleet) -> tuple[str, list[str], list[str]]:
    """(config text, server names, secrets to scrub) for the fleet's active replicas (a replica whose rental was
    ended outside the fleet, `deploy teardown ID`, leaves it here)."""
    store.retire_closed(fleet)
    g = fleet.gateway
    token_path, token = client_token(settings.home_path, fleet.name)
    active = store.replicas(fleet, (ACTIVE,))
    bes = backends(settings, fleet, active)
    p = paths(settings, fleet)
    cfg = GatewayConfig(
        client_token=token,
        sockets_dir=str(p.sockets),
        state_file=str(p.state_file),
        bind=g.get("bind", "127.0.0.1"),
        port=int(g.get("port", 8080)),
        check_interval_ms=int(g.get("check_interval_ms", 1000)),
    )
    return render(cfg, bes), [b.name for b in bes], [token, *(b.token for b in bes)]


def gateway_start(settings: DeploySettings, fleet_name: str, *, bind: str, port: int, check_ms: int) -> dict:
    find_haproxy(settings.haproxy)  # the cheapest error first
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        store.retire_closed(fleet)
        if not store.replicas(fleet, (ACTIVE,)):
            raise UsageError(f"fleet {fleet_name!r} has no active replicas: `deploy scale N --fleet {fleet_name}`")
        p = paths(settings, fleet)
        if process.master_pid(p) is not None:
            raise UsageError(
                f"the gateway of fleet {fleet_name!r} already runs on port {fleet.gateway.get('port')} "
                f"(pid {process.master_pid(p)}): `deploy gateway stop` first"
            )
        process.check_port_free(bind, port)
        fleet = store.set_gateway(fleet, bind=bind, port=port, check_interval_ms=check_ms)
        text, names, secrets_ = render_for(settings, store, fleet)
        pid = process.start(p, text, bind=bind, port=port, secrets_=secrets_, names=names, binary=settings.haproxy)
        token_path, _ = client_token(settings.home_path, fleet.name)
        store.set_gateway(fleet, pid=pid, config=str(p.config), token_file=str(token_path), started_at=time.time())
        ledger.event(None, "gateway", f"fleet {fleet_name}: started on {bind}:{port} (pid {pid}), servers {names}")
        return gateway_info(settings, store, store.get(fleet_name))


def gateway_reload(settings: DeploySettings, store: FleetStore, fleet: Fleet) -> bool:
    """Point a running gateway at the fleet's active replicas (False: no gateway runs, nothing to do)."""
    p = paths(settings, fleet)
    if process.master_pid(p) is None:
        return False
    text, names, secrets_ = render_for(settings, store, fleet)
    process.reload(p, text, secrets_=secrets_, names=names, binary=settings.haproxy)
    store.ledger.event(None, "gateway", f"fleet {fleet.name}: reloaded, servers {names}")
    return True


def gateway_stop(settings: DeploySettings, fleet_name: str, *, graceful: bool = True) -> bool:
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        p = paths(settings, fleet)
        stopped = process.stop(p, graceful=graceful)
        close_all(p.dir)
        store.set_gateway(fleet, pid=None)
        if stopped:
            ledger.event(None, "gateway", f"fleet {fleet_name}: stopped")
        return stopped


def gateway_info(settings: DeploySettings, store: FleetStore, fleet: Fleet) -> dict[str, Any]:
    """What `deploy gateway status` shows: the process, the URL, the token's file, and HAProxy's view per replica."""
    p = paths(settings, fleet)
    pid = process.master_pid(p)
    g = fleet.gateway
    info: dict[str, Any] = {
        "fleet": fleet.name,
        "running": pid is not None,
        "pid": pid,
        "url": f"http://{g.get('bind', '127.0.0.1')}:{g.get('port', 8080)}" if g.get("port") else None,
        "token_file": g.get("token_file"),
        "config": str(p.config),
        "servers": {},
    }
    if pid is not None:
        info["servers"] = {name: s.__dict__ for name, s in server_stats(p).items()}
    return info
