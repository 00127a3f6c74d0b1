"""What changes a fleet: provision N replicas in parallel, point the gateway at the active ones, scale, heal.

Every replica is provisioned exactly as a single `deploy provision` (same steps, same rollback of what that attempt
rented), each in its own thread with its own ledger connection; one failing does not stop the others. The GPU list
(`4090,3090`) is tried in order per replica: when the first type has no offer left, the next one is rented.
Removal always drains first: the replica leaves the gateway's rotation (HAProxy `state drain`), its streams finish
(HAProxy's open connections to it and its own /metrics both at zero), and only then is the gateway reloaded without
it and the rental destroyed.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import gateway as gw
from deploy import tunnels
from deploy.errors import DeployError, NoOffersError, UsageError
from deploy.fleet import ACTIVE, DRAINING, REMOVED, Fleet, FleetStore, Probe, Replica, due_for_replacement, probe
from csm_common.gpus import resolve
from deploy.ledger import Ledger
from deploy.records import State
from deploy.settings import DeploySettings

Log = Callable[[str], None]
_OPTION_FIELDS = (
    "max_price", "min_reliability", "min_cuda", "disk_gb", "image", "max_offers", "ready_timeout_s", "ssh_timeout_s",
    "keep_on_failure",
)  # fmt: skip


# --- the spec: how to make one more replica like the others --------------------------------------------------------


def make_spec(
    provider: str, gpus: list[str], options: Any, *, runtime: bool, ssh: dict[str, Any] | None = None
) -> dict[str, Any]:
    """From the provision command's ProvisionOptions (gpu left out: the list is tried per replica)."""
    return {
        "provider": provider,
        "gpus": gpus,
        "options": {k: getattr(options, k) for k in _OPTION_FIELDS},
        "extra": dict(options.extra),
        "runtime": runtime,
        "ssh": ssh or {},
    }


def _options(settings: DeploySettings, spec: dict[str, Any], gpu: str | None):
    from deploy.provision import ProvisionOptions

    opts = ProvisionOptions.from_settings(settings, provider=spec["provider"], gpu=resolve(gpu) if gpu else None)
    for k, v in spec["options"].items():
        setattr(opts, k, v)
    opts.extra.update(spec.get("extra") or {})
    return opts


def provision_one(settings: DeploySettings, spec: dict[str, Any], *, log: Log) -> int:
    """One replica, exactly as `deploy provision` makes one; GPU types tried in order. -> its ledger rental ID."""
    from deploy.providers import make_provider
    from deploy.provision import STEPS, provision

    steps = list(STEPS)
    if spec.get("runtime", True):
        from deploy.runtime_steps import register

        steps = register(steps)
    gpus = spec.get("gpus") or [None]
    failures = []
    with Ledger(settings.ledger_path) as ledger:
        for i, gpu in enumerate(gpus):
            provider = make_provider(spec["provider"], settings, **spec.get("ssh", {}))
            try:
                ctx = provision(settings, _options(settings, spec, gpu), provider, ledger, log=log, steps=steps)
            except NoOffersError as exc:
                failures.append(f"{gpu or 'any gpu'}: {exc}")
                if i + 1 < len(gpus):
                    log(f"no {gpu} could be provisioned; falling back to {gpus[i + 1]}")
                continue
            if ctx.host is not None:
                ctx.host.close()
            return ctx.rental_id
    raise NoOffersError("; ".join(failures))


@dataclass
class Added:
    rental_ids: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


_STEP_BOUNDARY = re.compile(r"^(offer \d+/\d+: |\[\d+/\d+\] \w+$)")


def add_replicas(settings: DeploySettings, fleet_name: str, count: int, *, log: Log) -> Added:
    """Provision `count` replicas in parallel and add each one that passed to the fleet.

    Ctrl-C (or SIGTERM, which the command maps to it) reaches only the main thread: it sets `cancel`, and each
    provision stops at its next step boundary by raising KeyboardInterrupt there, inside the provision driver, which
    destroys what that attempt rented, exactly as a single interrupted provision does. Replicas that finished first
    still join the fleet; then the interrupt goes on."""
    with Ledger(settings.ledger_path) as ledger:
        spec = FleetStore(ledger).get(fleet_name).spec
    if spec["provider"] != "local":  # made once here: parallel first uses would race on ssh-keygen
        from deploy.provision import ensure_ssh_key

        ensure_ssh_key(settings)
    result = Added()
    cancel = threading.Event()

    def one(i: int) -> int:
        def replica_log(message: str) -> None:
            if cancel.is_set() and _STEP_BOUNDARY.match(message):  # never inside a rollback's own messages
                raise KeyboardInterrupt
            log(f"replica {i}/{count}: {message}")

        return provision_one(settings, spec, log=replica_log)

    outcomes: list[tuple[int, int | None, BaseException | None]] = []
    interrupted: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, count), thread_name_prefix="replica") as pool:
        futures = [pool.submit(one, i) for i in range(1, count + 1)]
        for i, f in enumerate(futures, 1):
            while True:
                try:
                    outcomes.append((i, f.result(), None))
                except KeyboardInterrupt as exc:
                    if not f.done():  # the interrupt hit this thread while it waited: stop the others, then wait
                        interrupted = interrupted or exc
                        cancel.set()
                        log("interrupted: each replica stops at its next step and destroys what it rented")
                        continue
                    outcomes.append((i, None, exc))
                except BaseException as exc:  # noqa: BLE001 - one replica's failure is reported, not fatal
                    outcomes.append((i, None, exc))
                break
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        for i, rid, exc in outcomes:
            if rid is not None:
                store.add(fleet, rid)
                result.rental_ids.append(rid)
            else:
                why = "interrupted" if isinstance(exc, KeyboardInterrupt) else exc
                result.failures.append(f"replica {i}: {why}")
                log(f"replica {i}/{count}: failed: {why}")
    if interrupted is not None:
        raise interrupted
    return result


# --- the gateway, from the ledger ----------------------------------------------------------------------------------


def paths(settings: DeploySettings, fleet: Fleet) -> gw.Paths:
    return gw.Paths.for_fleet(settings.home_path, fleet.name)


def backends(settings: DeploySettings, fleet: Fleet, replicas: list[Replica]) -> list[gw.Backend]:
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
            port = tunnels.ensure(p.dir, r.name, r.rental, settings.ssh_key_path)
            address = f"127.0.0.1:{port}"
        else:
            address = gw.address_of(r.endpoint)
        out.append(gw.Backend(r.name, address, r.token()))
    return out


def replica_url(settings: DeploySettings, fleet: Fleet, r: Replica) -> str | None:
    """Where this machine reaches the replica's server now (None: a tunnelled one whose tunnel is closed)."""
    if not r.endpoint:
        return None
    if r.needs_tunnel:
        port = tunnels.current(paths(settings, fleet).dir, r.name)
        return f"http://127.0.0.1:{port}" if port else None
    return r.endpoint


def render_for(settings: DeploySettings, store: FleetStore, fleet: Fleet) -> tuple[str, list[str], list[str]]:
    """(config text, server names, secrets to scrub) for the fleet's active replicas."""
    g = fleet.gateway
    token_path, token = gw.client_token(settings.home_path, fleet.name)
    active = store.replicas(fleet, (ACTIVE,))
    bes = backends(settings, fleet, active)
    p = paths(settings, fleet)
    cfg = gw.GatewayConfig(
        client_token=token,
        sockets_dir=str(p.sockets),
        state_file=str(p.state_file),
        bind=g.get("bind", "127.0.0.1"),
        port=int(g.get("port", 8080)),
        check_interval_ms=int(g.get("check_interval_ms", 1000)),
    )
    return gw.render(cfg, bes), [b.name for b in bes], [token, *(b.token for b in bes)]


def gateway_start(settings: DeploySettings, fleet_name: str, *, bind: str, port: int, check_ms: int) -> dict:
    gw.find_haproxy()  # the cheapest error first
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        if not store.replicas(fleet, (ACTIVE,)):
            raise UsageError(f"fleet {fleet_name!r} has no active replicas: `deploy scale N --fleet {fleet_name}`")
        p = paths(settings, fleet)
        if gw.master_pid(p) is not None:
            raise UsageError(
                f"the gateway of fleet {fleet_name!r} already runs on port {fleet.gateway.get('port')} "
                f"(pid {gw.master_pid(p)}): `deploy gateway stop` first"
            )
        gw.check_port_free(bind, port)
        fleet = store.set_gateway(fleet, bind=bind, port=port, check_interval_ms=check_ms)
        text, names, secrets_ = render_for(settings, store, fleet)
        pid = gw.start(p, text, bind=bind, port=port, secrets_=secrets_, names=names)
        token_path, _ = gw.client_token(settings.home_path, fleet.name)
        store.set_gateway(fleet, pid=pid, config=str(p.config), token_file=str(token_path), started_at=time.time())
        ledger.event(None, "gateway", f"fleet {fleet_name}: started on {bind}:{port} (pid {pid}), servers {names}")
        return gateway_info(settings, store, store.get(fleet_name))


def gateway_reload(settings: DeploySettings, store: FleetStore, fleet: Fleet) -> bool:
    """Point a running gateway at the fleet's active replicas (False: no gateway runs, nothing to do)."""
    p = paths(settings, fleet)
    if gw.master_pid(p) is None:
        return False
    text, names, secrets_ = render_for(settings, store, fleet)
    gw.reload(p, text, secrets_=secrets_, names=names)
    store.ledger.event(None, "gateway", f"fleet {fleet.name}: reloaded, servers {names}")
    return True


def gateway_stop(settings: DeploySettings, fleet_name: str, *, graceful: bool = True) -> bool:
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        p = paths(settings, fleet)
        stopped = gw.stop(p, graceful=graceful)
        tunnels.close_all(p.dir)
        store.set_gateway(fleet, pid=None)
        if stopped:
            ledger.event(None, "gateway", f"fleet {fleet_name}: stopped")
        return stopped


def gateway_info(settings: DeploySettings, store: FleetStore, fleet: Fleet) -> dict[str, Any]:
    """What `deploy gateway status` shows: the process, the URL, the token's file, and HAProxy's view per replica."""
    p = paths(settings, fleet)
    pid = gw.master_pid(p)
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
        info["servers"] = {name: s.__dict__ for name, s in gw.server_stats(p).items()}
    return info


# --- removal (drain first) ------------------------------------------------------------------------------------------


def _provider_for(settings: DeploySettings, r: Replica):
    from deploy.providers import make_provider

    ssh = {}
    if r.rental.provider == "ssh":
        ssh = {"host": r.rental.ssh_host, "port": r.rental.ssh_port, "user": r.rental.ssh_user}
    return make_provider(r.rental.provider, settings, **ssh)


def end_rental(settings: DeploySettings, ledger: Ledger, r: Replica, rental: Any, *, reason: str, log: Log) -> None:
    """Destroy a replica's rental. On a borrowed `ssh` box, where destroy only releases the row, the server provision
    started there is stopped first (deploy/server_stop.py, as `deploy teardown` does); if the box cannot be reached
    the row stays open and the message names the teardown to run."""
    from deploy.provision import destroy_rental

    if rental.provider == "ssh" and rental.meta.get("server_pid"):
        from deploy.providers import host_for
        from deploy.server_stop import stop_server

        try:
            host = host_for(rental, settings, ledger)
            try:
                log(f"{r.name}: server pid {rental.meta['server_pid']}: {stop_server(host, rental.meta)}")
            finally:
                host.close()
        except Exception as exc:  # noqa: BLE001 - paramiko and socket errors from an unreachable box too
            log(f"{r.name}: could not stop its server ({exc}); the rental stays open: `deploy teardown {rental.id}`")
            return
    destroy_rental(_provider_for(settings, r), ledger, rental, reason=reason)


def wait_idle(
    settings: DeploySettings, fleet: Fleet, r: Replica, *, timeout: float, log: Log, poll_s: float = 0.25
) -> None:
    """Until the gateway has no connection open to this replica and the replica itself has no stream running or
    waiting (a dead replica is idle by definition)."""
    p = paths(settings, fleet)
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        busy = []
        if gw.master_pid(p) is not None:
            stat = gw.server_stats(p).get(r.name)
            if stat is not None and stat.current > 0:
                busy.append(f"{stat.current} open at the gateway")
        url = replica_url(settings, fleet, r)
        if url:
            pr = probe(url, r.token(), timeout=3.0)
            if pr.metrics and pr.busy:
                busy.append(f"{pr.metrics['active_streams']:.0f} streaming, {pr.metrics['queue_depth']:.0f} queued")
        if not busy:
            return
        if "; ".join(busy) != last:
            last = "; ".join(busy)
            log(f"draining {r.name}: {last}")
        if time.monotonic() > deadline:
            raise DeployError(
                f"replica {r.name} still busy after {timeout:g} s ({last}); it stays out of rotation: "
                f"run `deploy scale` again to finish, or `deploy teardown {r.rental.id}` to cut it"
            )
        time.sleep(poll_s)


def remove(
    settings: DeploySettings, store: FleetStore, fleet: Fleet, victims: list[Replica], *, log: Log, drain_s: float
) -> list[str]:
    """Drain, wait, reload without them, destroy, record. Returns the names removed."""
    p = paths(settings, fleet)
    running = gw.master_pid(p) is not None
    for r in victims:
        if r.state == ACTIVE:
            store.set_state(r, DRAINING, "scale down")
        if running:
            try:
                gw.drain(p, r.name)
            except gw.GatewayError as exc:
                log(f"{r.name}: {exc}")
        log(f"{r.name} (rental {r.rental.id}): out of rotation, waiting for its streams to finish")
    for r in victims:
        wait_idle(settings, fleet, r, timeout=drain_s, log=log)
    gateway_reload(settings, store, fleet)
    done = []
    for r in victims:
        tunnels.close(p.dir, r.name)
        rental = store.ledger.get(r.rental.id)
        if rental is not None and rental.is_open:
            end_rental(settings, store.ledger, r, rental, reason=f"fleet {fleet.name}: removed", log=log)
        store.set_state(r, REMOVED, "drained and destroyed")
        log(f"{r.name} (rental {r.rental.id}): drained and destroyed")
        done.append(r.name)
    return done


# --- scale and heal ------------------------------------------------------------------------------------------------


def scale(settings: DeploySettings, fleet_name: str, target: int, *, log: Log, drain_s: float) -> dict[str, Any]:
    if target < 1:
        raise UsageError(f"a fleet needs at least 1 replica, not {target} (`deploy teardown` ends it all)")
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        active = store.replicas(fleet, (ACTIVE,))
        leftover = store.replicas(fleet, (DRAINING,))
        removed = remove(settings, store, fleet, leftover, log=log, drain_s=drain_s) if leftover else []
        if len(active) > target:
            from deploy.fleet import choose_for_removal

            unhealthy = []
            if gw.master_pid(paths(settings, fleet)) is not None:
                unhealthy = [n for n, s in gw.server_stats(paths(settings, fleet)).items() if not s.up]
            victims = choose_for_removal(active, len(active) - target, unhealthy)
            removed += remove(settings, store, fleet, victims, log=log, drain_s=drain_s)
    added = Added()
    if len(active) < target:
        added = add_replicas(settings, fleet_name, target - len(active), log=log)
        with Ledger(settings.ledger_path) as ledger:
            store = FleetStore(ledger)
            gateway_reload(settings, store, store.get(fleet_name))
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        now_active = [r.name for r in store.replicas(store.get(fleet_name), (ACTIVE,))]
    result = {"fleet": fleet_name, "target": target, "active": now_active, "removed": removed,
              "added": [f"r{i}" for i in added.rental_ids], "failures": added.failures}  # fmt: skip
    if added.failures:
        raise DeployError(f"scale reached {len(now_active)} of {target} replicas: " + "; ".join(added.failures))
    return result


def _box_alive(settings: DeploySettings, r: Replica) -> bool:
    if not r.rental.is_open:
        return False
    if r.rental.provider_id is None:
        return False
    try:
        box = _provider_for(settings, r).get(str(r.rental.provider_id))
    except NotImplementedError:
        return True
    return box is not None and box.state in (State.RUNNING, State.PENDING)


def heal(
    settings: DeploySettings,
    fleet_name: str,
    *,
    after_s: float,
    log: Log,
    only: str | None = None,
    replace: bool = True,
    poll_s: float = 1.0,
) -> dict[str, Any]:
    """Replace replicas whose instance died, or whose /ready has failed for `after_s` seconds (watched here until
    it either recovers or the time is up). Dead ones are destroyed (nothing left billing), then replaced."""
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        candidates = store.replicas(fleet, (ACTIVE,))
        if only is not None:
            candidates = [store.replica(fleet, only)]
        verdicts: dict[str, str] = {}
        due: list[Replica] = []
        pending = list(candidates)
        while pending:
            now = time.time()
            still = []
            for r in pending:
                r = store.replica(fleet, r.name)
                alive = _box_alive(settings, r)
                ready, detail = True, "no server (box only)"
                if alive and r.endpoint:
                    url = replica_url(settings, fleet, r)
                    if url is None and r.needs_tunnel and gw.master_pid(paths(settings, fleet)) is not None:
                        try:
                            backends(settings, fleet, [r])  # reopens its tunnel
                        except DeployError as exc:
                            log(f"{r.name}: {exc}")
                        url = replica_url(settings, fleet, r)
                    pr = probe(url, r.token(), timeout=3.0, with_metrics=False) if url else Probe(False, "no tunnel")
                    ready, detail = pr.ready, pr.detail
                if ready:
                    store.set_failing(r, None)
                elif alive and r.failing_since is None:
                    store.set_failing(r, now)
                    r = store.replica(fleet, r.name)
                replace_now, why = due_for_replacement(r, box_alive=alive, ready=ready, now=now, after_s=after_s)
                verdicts[r.name] = why if not ready else "ready"
                if replace_now:
                    due.append(r)
                    log(f"{r.name} (rental {r.rental.id}): {why} ({detail}); replacing it")
                elif not ready:
                    still.append(r)
            pending = still
            if pending:
                time.sleep(poll_s)
        leftover = store.replicas(fleet, (DRAINING,))  # a scale or heal that stopped half-way: finish it
        if leftover and only is None:
            remove(settings, store, fleet, leftover, log=log, drain_s=600.0)
        for r in due:
            store.set_state(r, DRAINING, verdicts[r.name])
        if due:
            gateway_reload(settings, store, fleet)
        for r in due:
            tunnels.close(paths(settings, fleet).dir, r.name)
            rental = store.ledger.get(r.rental.id)
            if rental is not None and rental.is_open:
                end_rental(settings, store.ledger, r, rental, reason=f"heal: {verdicts[r.name]}", log=log)
            store.set_state(r, REMOVED, f"replaced: {verdicts[r.name]}")
    added = Added()
    if due and replace:
        added = add_replicas(settings, fleet_name, len(due), log=log)
        with Ledger(settings.ledger_path) as ledger:
            store = FleetStore(ledger)
            gateway_reload(settings, store, store.get(fleet_name))
    result = {"fleet": fleet_name, "checked": verdicts, "replaced": [r.name for r in due],
              "added": [f"r{i}" for i in added.rental_ids], "failures": added.failures}  # fmt: skip
    if added.failures:
        raise DeployError("heal removed the dead replicas but could not replace all: " + "; ".join(added.failures))
    return result


def token_path(settings: DeploySettings, fleet_name: str) -> Path:
    return gw.client_token(settings.home_path, fleet_name)[0]


def create_fleet(settings: DeploySettings, name: str, spec: dict[str, Any], count: int, *, log: Log) -> dict[str, Any]:
    """`deploy provision --replicas N`: the fleet row first (so a crash leaves it on record), then N in parallel."""
    if count < 1:
        raise UsageError(f"--replicas must be at least 1, not {count}")
    with Ledger(settings.ledger_path) as ledger:
        FleetStore(ledger).create(name, spec)
    added = add_replicas(settings, name, count, log=log)
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(name)
        gateway_reload(settings, store, fleet)
        replicas = [r.as_dict() for r in store.replicas(fleet, (ACTIVE,))]
    result = {"fleet": name, "requested": count, "replicas": replicas, "failures": added.failures}
    if added.failures:
        got = ", ".join(f"r{i}" for i in added.rental_ids) or "none"
        raise DeployError(
            f"fleet {name}: {len(added.rental_ids)} of {count} replicas ready ({got}); "
            + "; ".join(added.failures)
            + f" (each failed one was rolled back; `deploy scale {count} --fleet {name}` tries again)"
        )
    return result
