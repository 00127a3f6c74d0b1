"""The provision steps after `check`, when the options carry a runtime: push -> install -> autotune -> start -> ready.

    push      build the wheel here, put it and the lock file on the box (sha256-checked)   (mode bootstrap),
              and the operator's Hub token (0600) for a checkpoint from the Hub (hub.py)
    install   venv on the box, pins, the wheel; or check the image's / this interpreter's runtime
    autotune  push the profile this GPU already has, or measure one on the box and keep a copy here
    start     fresh token (here 0600, there 0600), the server started detached, its log on the box; on a public
              bind it serves TLS with a certificate for the public address (certificate.py)
              and the box's watchdog, which must arm (watchdog.py): one that does not fails the step
    ready     ready.py: /ready with the token, directly where the provider says the port answers, else through an
              SSH tunnel; until 200 or the deadline

A failure in start or ready prints the server log's last lines; the driver then destroys the box and records why.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import tempfile
import time
from pathlib import Path

from deploy.errors import RemoteError
from deploy.ledger import records
from deploy.provision.autotune import find_local_profile, profile_summary, run_autotune
from deploy.provision.certificate import tls_args
from deploy.provision.context import Context, Step
from deploy.provision.hub import hub_args, put_hub_token
from deploy.provision.layout import (
    LOCK_FILE,
    PROFILES_DIR,
    SERVER_LOG,
    SERVER_NAME,
    SERVER_PID,
    BoxLayout,
    build_wheel,
    device_probe_command,
    install_script,
)
from deploy.provision.options import RuntimeOptions
from deploy.provision.ready import step_ready
from deploy.provision.server import server_command
from deploy.provision.watchdog import start_watchdog
from deploy.remote.detached import stop_detached
from deploy.secrets.tokens import new_rental_token


def _q(path: str) -> str:
    return shlex.quote(path)


def runtime_of(ctx: Context) -> tuple[RuntimeOptions, BoxLayout]:
    """The runtime options and box layout; the layout is relative to the box's home until `push` makes it absolute."""
    assert ctx.runtime is not None, "runtime steps need ProvisionOptions.runtime"
    if ctx.layout is None:
        ctx.layout = BoxLayout.for_remote_dir(ctx.settings.remote_dir, ctx.runtime.mode)
    return ctx.runtime, ctx.layout


# --- push ------------------------------------------------------------------------------------------------------------


def step_push(ctx: Context) -> None:
    opts, layout = runtime_of(ctx)
    assert ctx.host is not None
    ctx.host.run(f"mkdir -p {_q(layout.dir)}/wheels {_q(layout.profiles)}", stream=False)
    pushed = [f"runtime.txt {ctx.host.put(LOCK_FILE, layout.lock)[:12]}"]
    if opts.mode == "bootstrap":
        with tempfile.TemporaryDirectory(prefix="csm-deploy-wheel-") as tmp:
            started = time.monotonic()
            wheel = build_wheel(Path(tmp))
            ctx.log(f"built {wheel.name} in {time.monotonic() - started:.1f} s")
            digest = ctx.host.put(wheel, layout.path(f"wheels/{wheel.name}"))
        ctx.wheel = wheel.name
        pushed.append(f"{wheel.name} {digest[:12]}")
    box_dir = ctx.host.run(f"cd {_q(layout.dir)} && pwd", stream=False).stdout.strip()
    # from here on every path is absolute: the server runs from the box dir, autotune and probes from the home
    ctx.layout = BoxLayout(box_dir, opts.mode)
    ctx.event("push", "; ".join(pushed) + " (sha256 checked)")
    ctx.log(f"pushed {', '.join(p.split()[0] for p in pushed)} to {box_dir} on {ctx.host.name}")
    put_hub_token(ctx)  # before autotune: a first sweep downloads the checkpoint too


# --- install ---------------------------------------------------------------------------------------------------------


def step_install(ctx: Context) -> None:
    opts, layout = runtime_of(ctx)
    assert ctx.host is not None
    if opts.mode == "bootstrap":
        assert ctx.wheel is not None, "push builds the wheel in bootstrap mode"
        script = install_script(layout, opts, ctx.wheel)
        res = ctx.host.run(f"bash -c {_q(script)}", timeout=opts.install_timeout_s)
        detail = (res.stdout.strip().splitlines() or ["installed"])[-1]
    else:
        where = {"image": "the image's", "current": "this machine's own"}[opts.mode]
        ctx.host.run(f"{_q(layout.runtime_bin)} --help >/dev/null", stream=False, timeout=120)
        detail = f"using {where} runtime: {layout.runtime_bin}"
    ctx.event("install", detail)
    ctx.log(detail)


# --- autotune --------------------------------------------------------------------------------------------------------


def profile_dirs(opts: RuntimeOptions, home: Path) -> list[Path]:
    """Where a profile measured before may be: the project's profiles/ first, then DEPLOY_HOME/profiles."""
    return [Path(opts.profiles_dir) if opts.profiles_dir else PROFILES_DIR, home / "profiles"]


def step_autotune(ctx: Context) -> None:
    opts, layout = runtime_of(ctx)
    assert ctx.host is not None
    probe = ctx.host.run(device_probe_command(layout), stream=False, timeout=300)
    try:
        device = json.loads(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RemoteError(f"could not read the box's device facts: {probe.stdout.strip()[-200:]!r}") from None
    slug = device["slug"]
    ctx.device = device
    found = None if opts.autotune else find_local_profile(profile_dirs(opts, ctx.settings.home_path), slug, opts.model)
    if found is not None:
        ctx.host.put(found, f"{layout.profiles}/{slug}.yaml")
        ctx.profile = profile_summary(found.read_text(), "pushed", str(found))
        ctx.event("autotune", f"skipped: pushed the existing profile {found} for {slug}")
        ctx.log(f"profile for {device['name']} ({slug}) exists: pushed {found}")
        return
    if opts.autotune is False:
        ctx.profile = None
        ctx.event("autotune", f"skipped (--no-autotune): no profile for {slug}, the server uses safe defaults")
        ctx.log(f"no profile for {slug} and --no-autotune: the server starts with safe defaults")
        return
    size = "quick" if opts.autotune_quick else "full"
    ctx.log(f"no profile for {device['name']} ({slug}): measuring one on the box ({size} sweep)")
    result = run_autotune(
        ctx.host,
        runtime=layout.runtime_bin,
        workdir=layout.dir,
        model=opts.model,
        quick=opts.autotune_quick,
        out_dir=ctx.settings.home_path / "profiles",
        plot=False,
        extra=(*opts.autotune_args, *hub_args(ctx)),
        timeout=opts.autotune_timeout_s,
        log=ctx.log,
    )
    ctx.profile = profile_summary(result.profile.read_text(), "autotuned", str(result.profile))
    chosen, took = result.summary.get("chosen"), result.summary.get("duration_s")
    ctx.event("autotune", f"{slug}: chose {chosen} in {took} s; copy in {result.profile}")
    ctx.log(f"autotune chose {chosen}: {result.summary.get('why', '')}")


# --- start -----------------------------------------------------------------------------------------------------------


def step_start(ctx: Context) -> None:
    opts, layout = runtime_of(ctx)
    assert ctx.host is not None
    ctx.direct = None if opts.tunnel else ctx.provider.direct_address(ctx.box, opts.server_port)
    if ctx.direct is not None:  # a mapped port reaches only 0.0.0.0; the server always has a token
        opts = ctx.runtime = dataclasses.replace(opts, bind=ctx.direct.bind)
    box_dir = layout.dir
    token_path, token_sha = new_rental_token(ctx.settings.home_path, ctx.rental_id)
    box_token = f"{box_dir}/token"
    # the file exists with mode 0600 before the secret is written into it, and stays 0600 after
    ctx.host.run(f"umask 077 && : > {_q(box_token)} && chmod 600 {_q(box_token)}", stream=False)
    ctx.host.put(token_path, box_token)
    ctx.host.run(f"chmod 600 {_q(box_token)}", stream=False)
    # a server this toolkit started here before (re-provisioning an ssh box) gives the port back first
    stop_detached(ctx.host, SERVER_PID)
    command = server_command(opts, layout, box_dir, extra=[*hub_args(ctx), *tls_args(ctx, box_dir)])
    pid = ctx.host.start_detached(command, name=SERVER_NAME)
    ctx.server_pid = pid
    started = records.server_started(
        token_file=str(token_path),
        token_sha256=token_sha,
        model=opts.model,
        port=opts.server_port,
        pid=pid,
        pid_file=SERVER_PID,  # what stopping the server checks before it signals the group (server.py)
        log=SERVER_LOG,
        runtime_mode=opts.mode,
    )
    ctx.ledger.update_meta(ctx.rental_id, **started)
    ctx.event("start", f"{SERVER_NAME} pid {pid}: {opts.model} on {opts.bind}:{opts.server_port}, log ~/{SERVER_LOG}")
    ctx.log(f"started {SERVER_NAME} (pid {pid}) serving {opts.model}; log on the box: ~/{SERVER_LOG}")
    if opts.watchdog is not None:
        start_watchdog(ctx, opts, layout)


RUNTIME_STEPS: tuple[Step, ...] = (
    Step("push", step_push),  # a box that cannot take files may be a bad box: try the next offer
    Step("install", step_install, retry_next_offer=False),  # pins or wheel that do not install fail everywhere
    Step("autotune", step_autotune, retry_next_offer=False),
    Step("start", step_start, retry_next_offer=False),
    Step("ready", step_ready, retry_next_offer=False),  # a server that fails here fails the same on any box
)
