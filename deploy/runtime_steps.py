"""The provision steps after `check`: push -> install -> autotune -> start -> ready. Registered into
deploy.provision.STEPS by `register()`; each reads RuntimeOptions from ctx.state["runtime"] (set by `push`).

    push      build the wheel here, put it and the lock file on the box (sha256-checked)   (mode bootstrap)
    install   venv on the box, pins, the wheel; or check the image's / this interpreter's runtime
    autotune  push the profile this GPU already has, or measure one on the box and keep a copy here
    start     fresh token (here 0600, there 0600), the server started detached, its log on the box
    ready     /ready with the token: directly on a mapped public port (vast `ports`) or on this machine, else through
              an SSH tunnel; until 200 or the deadline

A failure in start or ready prints the server log's last lines; the driver then destroys the box and records why.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

from deploy.bootstrap import (
    LOCK_FILE,
    SERVER_LOG,
    SERVER_NAME,
    SERVER_PID,
    BoxLayout,
    RuntimeOptions,
    build_wheel,
    device_probe_command,
    install_script,
    model_family,
)
from deploy.client import read_token_file
from deploy.endpoint import DIRECT, TUNNEL, new_token, tunnel
from deploy.errors import DeployError, RemoteError
from deploy.provision import Context, Step, add_step

LOG_TAIL_LINES = 30


def runtime(ctx: Context) -> tuple[RuntimeOptions, BoxLayout]:
    if "runtime" not in ctx.state:
        opts = RuntimeOptions.from_extra(ctx.options.extra, provider=ctx.provider.name, image=ctx.options.image)
        ctx.state["runtime"] = opts
        ctx.state["layout"] = BoxLayout.for_remote_dir(ctx.settings.remote_dir, opts.mode)
    return ctx.state["runtime"], ctx.state["layout"]


def _q(path: str) -> str:
    return shlex.quote(path)


# --- push ------------------------------------------------------------------------------------------------------------


def step_push(ctx: Context) -> None:
    opts, layout = runtime(ctx)
    assert ctx.host is not None
    ctx.host.run(f"mkdir -p {_q(layout.dir)}/wheels {_q(layout.profiles)}", stream=False)
    pushed = [f"runtime.txt {ctx.host.put(LOCK_FILE, layout.lock)[:12]}"]
    if opts.mode == "bootstrap":
        with tempfile.TemporaryDirectory(prefix="csm-deploy-wheel-") as tmp:
            started = time.monotonic()
            wheel = build_wheel(Path(tmp))
            ctx.log(f"built {wheel.name} in {time.monotonic() - started:.1f} s")
            digest = ctx.host.put(wheel, layout.path(f"wheels/{wheel.name}"))
        ctx.state["wheel"] = wheel.name
        pushed.append(f"{wheel.name} {digest[:12]}")
    ctx.state["box_dir"] = ctx.host.run(f"cd {_q(layout.dir)} && pwd", stream=False).stdout.strip()
    # from here on every path is absolute: the server runs from the box dir, autotune and probes from the home
    ctx.state["layout"] = layout = BoxLayout(ctx.state["box_dir"], opts.mode)
    ctx.event("push", "; ".join(pushed) + " (sha256 checked)")
    ctx.log(f"pushed {', '.join(p.split()[0] for p in pushed)} to {ctx.state['box_dir']} on {ctx.host.name}")


# --- install ---------------------------------------------------------------------------------------------------------


def step_install(ctx: Context) -> None:
    opts, layout = runtime(ctx)
    assert ctx.host is not None
    if opts.mode == "bootstrap":
        script = install_script(layout, opts, ctx.state["wheel"])
        res = ctx.host.run(f"bash -c {_q(script)}", timeout=opts.install_timeout_s)
        detail = (res.stdout.strip().splitlines() or ["installed"])[-1]
    else:
        where = {"image": "the image's", "current": "this machine's own"}[opts.mode]
        ctx.host.run(f"{_q(layout.runtime_bin)} --help >/dev/null", stream=False, timeout=120)
        detail = f"using {where} runtime: {layout.runtime_bin}"
    ctx.event("install", detail)
    ctx.log(detail)


# --- autotune --------------------------------------------------------------------------------------------------------


def local_profile(opts: RuntimeOptions, home: Path, slug: str) -> Path | None:
    """A profile for this device slug and model shape: the project's profiles/ first, then DEPLOY_HOME/profiles."""
    import yaml

    for directory in (Path(opts.profiles_dir), home / "profiles"):
        path = directory / f"{slug}.yaml"
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
            measured = data["identity"]["model"]["id"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue  # not a usable profile: the runtime would refuse it too
        if model_family(measured) == model_family(opts.model):
            return path
    return None


def profile_summary(text: str, source: str, path: str) -> dict[str, Any]:
    """What the final printout needs from a profile: the chosen batch and its measured RTF."""
    import yaml

    data = yaml.safe_load(text) or {}
    chosen = data.get("chosen") or {}
    measurement = chosen.get("measurement") or {}
    settings = chosen.get("settings") or {}
    return {
        "source": source,
        "path": path,
        "slug": data.get("slug"),
        "candidate": chosen.get("candidate"),
        "rtf": measurement.get("rtf"),
        "max_streams": settings.get("max_streams"),
        "realtime": chosen.get("realtime"),
        "measured_on": ((data.get("identity") or {}).get("device") or {}).get("name"),
    }


def step_autotune(ctx: Context) -> None:
    opts, layout = runtime(ctx)
    assert ctx.host is not None
    probe = ctx.host.run(device_probe_command(layout), stream=False, timeout=300)
    try:
        device = json.loads(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RemoteError(f"could not read the box's device facts: {probe.stdout.strip()[-200:]!r}") from None
    slug = device["slug"]
    ctx.state["device"] = device
    box_profile = f"{layout.profiles}/{slug}.yaml"
    found = None if opts.autotune else local_profile(opts, ctx.settings.home_path, slug)
    if found is not None:
        ctx.host.put(found, box_profile)
        ctx.state["profile"] = profile_summary(found.read_text(), "pushed", str(found))
        ctx.event("autotune", f"skipped: pushed the existing profile {found} for {slug}")
        ctx.log(f"profile for {device['name']} ({slug}) exists: pushed {found}")
        return
    if opts.autotune is False:
        ctx.state["profile"] = None
        ctx.event("autotune", f"skipped (--no-autotune): no profile for {slug}, the server uses safe defaults")
        ctx.log(f"no profile for {slug} and --no-autotune: the server starts with safe defaults")
        return
    args = ["autotune", "--model", opts.model, "--out", layout.profiles, "--json", "--no-plot"]
    args += ["--quick"] if opts.autotune_quick else []
    command = " ".join(_q(a) for a in [layout.runtime_bin, *args, *opts.autotune_args])
    ctx.log(
        f"no profile for {device['name']} ({slug}): measuring one on the box ({'quick' if opts.autotune_quick else 'full'} sweep)"
    )
    res = ctx.host.run(command, timeout=opts.autotune_timeout_s, check=False)
    if not res.ok:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RemoteError(f"autotune on the box exited {res.exit_code}: {tail[0]}")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    text = ctx.host.read_text(summary["profile"])
    keep = ctx.settings.home_path / "profiles" / f"{slug}.yaml"
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_text(text)
    ctx.state["profile"] = profile_summary(text, "autotuned", str(keep))
    ctx.event("autotune", f"{slug}: chose {summary.get('chosen')} in {summary.get('duration_s')} s; copy in {keep}")
    ctx.log(f"autotune chose {summary.get('chosen')}: {summary.get('why', '')}")


# --- start -----------------------------------------------------------------------------------------------------------


def server_command(opts: RuntimeOptions, layout: BoxLayout, box_dir: str) -> str:
    """The detached server's command line. The environment is scrubbed of the one operator secret a LocalHost child
    would otherwise inherit (a remote box never has it: SSH forwards no environment)."""
    args = [
        layout.runtime_bin,
        "serve",
        "--model",
        opts.model,
        "--host",
        opts.bind,
        "--port",
        str(opts.port),
        "--token-file",
        f"{box_dir}/token",
        "--profile",
        "auto",
    ]
    env = f"env -u VAST_API_KEY CSM_PROFILES_DIR={_q(box_dir + '/profiles')}"
    return f"cd {_q(box_dir)} && exec {env} " + " ".join(_q(a) for a in args)


def direct_address(box: Any, opts: RuntimeOptions) -> tuple[str, int] | None:
    """(public IP, public port) where the provider mapped the server's port to one (vast `ports`), unless --tunnel.
    None means the server stays on the box's loopback, reached through an SSH tunnel."""
    if opts.tunnel or box is None or not getattr(box, "public_ip", None):
        return None
    public_port = (getattr(box, "ports", None) or {}).get(opts.port)
    return (box.public_ip, int(public_port)) if public_port else None


def step_start(ctx: Context) -> None:
    opts, layout = runtime(ctx)
    assert ctx.host is not None
    direct = direct_address(ctx.box, opts) if ctx.provider.name != "local" else None
    if direct:  # a mapped port only reaches 0.0.0.0; the server refuses that without a token, and it always has one
        opts = ctx.state["runtime"] = dataclasses.replace(opts, bind="0.0.0.0")
    ctx.state["direct"] = direct
    box_dir = ctx.state["box_dir"]
    token_path, token_sha = new_token(ctx.settings.home_path, ctx.rental_id)
    box_token = f"{box_dir}/token"
    # the file exists with mode 0600 before the secret is written into it, and stays 0600 after
    ctx.host.run(f"umask 077 && : > {_q(box_token)} && chmod 600 {_q(box_token)}", stream=False)
    ctx.host.put(token_path, box_token)
    ctx.host.run(f"chmod 600 {_q(box_token)}", stream=False)
    # a server this toolkit started here before (re-provisioning an ssh box) gives the port back first
    ctx.host.run(
        f"[ -f {SERVER_PID} ] && kill -TERM -- -$(cat {SERVER_PID}) 2>/dev/null; rm -f {SERVER_PID}; true", stream=False
    )
    pid = ctx.host.start_detached(server_command(opts, layout, box_dir), name=SERVER_NAME)
    ctx.state["server_pid"] = pid
    ctx.ledger.update_meta(
        ctx.rental_id,
        token_file=str(token_path),
        token_sha256=token_sha,
        model=opts.model,
        port=opts.port,
        server_pid=pid,
        server_pid_file=SERVER_PID,  # what `deploy teardown` checks before it stops the group on an ssh box
        server_log=SERVER_LOG,
        runtime_mode=opts.mode,
    )
    ctx.event("start", f"{SERVER_NAME} pid {pid}: {opts.model} on {opts.bind}:{opts.port}, log ~/{SERVER_LOG}")
    ctx.log(f"started {SERVER_NAME} (pid {pid}) serving {opts.model}; log on the box: ~/{SERVER_LOG}")


# --- ready -----------------------------------------------------------------------------------------------------------


def log_tail(ctx: Context, lines: int = LOG_TAIL_LINES) -> str:
    """The log's last lines, minus our own /ready polls (they would push the traceback out of the window)."""
    if ctx.host is None:
        return ""
    command = f"grep -v '\"GET /ready HTTP' {SERVER_LOG} | tail -n {int(lines)}"
    try:
        res = ctx.host.run(command, stream=False, check=False, timeout=30)
    except (DeployError, OSError) as exc:
        return f"(could not read {SERVER_LOG}: {exc})"
    return res.stdout if res.stdout.strip() else f"(nothing in {SERVER_LOG}: {res.stderr.strip()[:200]})"


def show_log_tail(ctx: Context) -> str:
    """Print the server log's last lines to the progress stream; returns the last non-empty one."""
    tail = log_tail(ctx)
    ctx.log(f"--- last {LOG_TAIL_LINES} lines of ~/{SERVER_LOG} on the box ---")
    for line in tail.rstrip().splitlines():
        ctx.log(f"  | {line}")
    ctx.log("--- end of log ---")
    last = [line for line in tail.strip().splitlines() if line.strip()]
    return last[-1].strip() if last else "empty log"


def _pause(ctx: Context, deadline: float) -> None:
    time.sleep(min(ctx.settings.poll_interval_s, 1.0, max(0.0, deadline - time.monotonic())))


def wait_listening(ctx: Context, opts: RuntimeOptions, deadline: float) -> None:
    """On the box: until the server's port accepts connections (uvicorn binds once the model is loaded), failing at
    once when the process is gone. A tunnel opened before that would only carry refusals."""
    pid = int(ctx.state["server_pid"])
    on_box = "127.0.0.1" if opts.bind == "0.0.0.0" else opts.bind
    probe = f"kill -0 {pid} 2>/dev/null || exit 7; (exec 3<>/dev/tcp/{on_box}/{opts.port}) 2>/dev/null || exit 8"
    polls = 0
    while True:
        polls += 1
        res = ctx.host.run(f"bash -c {_q(probe)}", stream=False, check=False, timeout=30)
        if res.exit_code == 0:
            ctx.log(f"the server listens on {opts.bind}:{opts.port} on the box after {polls} polls")
            return
        if res.exit_code == 7:
            raise RemoteError(f"the server (pid {pid}) exited before /ready answered: {show_log_tail(ctx)}")
        if time.monotonic() >= deadline:
            raise RemoteError(
                f"the server did not listen on port {opts.port} within the deadline: {show_log_tail(ctx)}"
            )
        if polls % 15 == 0:
            ctx.log(f"waiting for the server to listen (0/1 ready, {deadline - time.monotonic():.0f} s left)")
        _pause(ctx, deadline)


def _json(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def poll_ready(ctx: Context, url: str, token: str, deadline: float) -> dict[str, Any]:
    """GET /ready with the token until 200 (503 while loading or warming up). Returns /ready's JSON body."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    polls, last = 0, "no answer yet"
    while True:
        polls += 1
        try:
            r = httpx.get(url.rstrip("/") + "/ready", headers=headers, timeout=10.0)
            if r.status_code == 200:
                ctx.log(f"/ready answered 200 after {polls} polls (1/1 ready)")
                return _json(r)
            last = f"HTTP {r.status_code}"
            body = _json(r)
            if body.get("status") in ("failed", "stopped"):  # the model did not load: waiting longer changes nothing
                why = body.get("error") or body["status"]
                show_log_tail(ctx)
                raise RemoteError(f"the server could not load {ctx.state['runtime'].model}: {why}")
            if r.status_code in (401, 403):
                raise RemoteError(f"/ready refused our token ({last}): is another server on port {url}?")
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        if time.monotonic() >= deadline:
            raise RemoteError(
                f"/ready did not answer 200 within the deadline ({polls} polls, last: {last}): {show_log_tail(ctx)}"
            )
        if polls % 10 == 0:
            ctx.log(f"waiting for /ready (0/1 ready, {last}, {deadline - time.monotonic():.0f} s left)")
        _pause(ctx, deadline)


DIRECT_PROBE_S = 20.0  # how long a mapped port may stay silent before the ready step falls back to the tunnel


def answers(url: str, deadline: float, *, within_s: float | None = None) -> str | None:
    """None once GET /health answers at all (any status) from here, else why not, tried for `within_s` at most:
    a mapped port that a firewall drops should fall back to the tunnel, not eat the whole ready deadline."""
    import httpx

    until, why = min(deadline, time.monotonic() + (DIRECT_PROBE_S if within_s is None else within_s)), "not tried"
    while True:
        try:
            httpx.get(url + "/health", timeout=5.0)
            return None
        except httpx.HTTPError as exc:
            why = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= until:
            return why
        time.sleep(0.5)


def step_ready(ctx: Context) -> None:
    opts, _layout = runtime(ctx)
    assert ctx.host is not None
    token = read_token_file(ctx.refresh().meta["token_file"])
    deadline = time.monotonic() + opts.runtime_timeout_s
    on_box = f"http://{'127.0.0.1' if opts.bind == '0.0.0.0' else opts.bind}:{opts.port}"
    wait_listening(ctx, opts, deadline)
    direct = ctx.state.get("direct")
    public = f"http://{direct[0]}:{direct[1]}" if direct else None
    if public and (why := answers(public, deadline)) is not None:
        ctx.log(f"the mapped port {public} does not answer from here ({why}): using the SSH tunnel instead")
        ctx.event("direct-unreachable", f"{public}: {why}")
        public = None
    if ctx.provider.name == "local":
        body, endpoint, access = poll_ready(ctx, on_box, token, deadline), on_box, DIRECT
    elif public:
        body, endpoint, access = poll_ready(ctx, public, token, deadline), public, DIRECT
    else:
        with tunnel(ctx.host, opts.port) as local_port:
            body = poll_ready(ctx, f"http://127.0.0.1:{local_port}", token, deadline)
        endpoint, access = on_box, TUNNEL
    ctx.ledger.update_meta(ctx.rental_id, endpoint=endpoint, access=access, profile=ctx.state.get("profile"))
    ctx.refresh()
    note = (body or {}).get("profile")
    ctx.event("ready", f"{endpoint} ({access}); profile: {json.dumps(note)[:300]}")


RUNTIME_STEPS: tuple[Step, ...] = (
    Step("push", step_push),  # a box that cannot take files may be a bad box: try the next offer
    Step("install", step_install, retry_next_offer=False),  # pins or wheel that do not install fail everywhere
    Step("autotune", step_autotune, retry_next_offer=False),
    Step("start", step_start, retry_next_offer=False),
    Step("ready", step_ready, retry_next_offer=False),  # a server that fails here fails the same on any box
)


def register(steps: list[Step] | None = None) -> list[Step]:
    """Append the runtime steps after `check` (once); returns the list."""
    from deploy.provision import STEPS

    target = STEPS if steps is None else steps
    names = {s.name for s in target}
    after = "check"
    for step in RUNTIME_STEPS:
        if step.name not in names:
            add_step(step, after=after, steps=target)
        after = step.name
    return target
