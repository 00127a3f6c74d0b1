from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deploy import output
from deploy.commands import options as c
from deploy.errors import UsageError


def provision_command(
    gpu: c.OptionalGpu = None,
    provider: c.Provider_ = "vast",
    max_price: c.MaxPrice = None,
    image: Annotated[
        str | None, typer.Option(help="Container image [default: DEPLOY_IMAGE].", show_default=False)
    ] = None,
    disk: c.Disk = None,
    max_offers: Annotated[int | None, typer.Option(help="Offers to try before giving up.", show_default=False)] = None,
    ready_timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for `running`.", show_default=False)
    ] = None,
    ssh_timeout: Annotated[float | None, typer.Option(help="Seconds to wait for SSH.", show_default=False)] = None,
    keep_on_failure: Annotated[bool, typer.Option(help="Leave a failed box running for inspection.")] = False,
    host: Annotated[str | None, typer.Option(help="ssh provider: the box's address.")] = None,
    port: Annotated[int, typer.Option(help="ssh provider: the SSH port.")] = 22,
    user: Annotated[str | None, typer.Option(help="ssh provider: the login [default: DEPLOY_SSH_USER].")] = None,
    runtime: Annotated[
        bool, typer.Option(help="Install, tune and start the runtime after `check` (--no-runtime: box only).")
    ] = True,
    model: Annotated[str, typer.Option(help="Model to serve: sesame/csm-1b, tiny-random, a path.")] = "sesame/csm-1b",
    runtime_mode: Annotated[
        str, typer.Option(help="auto | bootstrap (push the wheel) | image (--image has it) | current (local only).")
    ] = "auto",
    autotune: Annotated[
        bool | None,
        typer.Option(
            help="Force (--autotune) or skip (--no-autotune) the sweep [default: only if no profile].",
            show_default=False,
        ),
    ] = None,
    autotune_quick: Annotated[
        bool | None,
        typer.Option(
            "--autotune-quick/--autotune-full",
            help="Sweep size [default: quick for *-random models].",
            show_default=False,
        ),
    ] = None,
    autotune_args: Annotated[
        str | None, typer.Option(help='Extra `csm-runtime autotune` options, e.g. "--compile off".', show_default=False)
    ] = None,
    server_port: Annotated[
        int | None,
        typer.Option(help="The server's port on the box [default: 8000; a free one for local].", show_default=False),
    ] = None,
    box_python: Annotated[
        str, typer.Option(help="Base Python on the box for the venv (auto: /opt/conda/bin/python3, then python3).")
    ] = "auto",
    box_site_packages: Annotated[
        str | None,
        typer.Option(
            help="A prepared site-packages dir on the box, added to its venv (offline boxes).", show_default=False
        ),
    ] = None,
    runtime_timeout: Annotated[
        float | None, typer.Option(help="Seconds from start to /ready [default: 900].", show_default=False)
    ] = None,
    tunnel: Annotated[
        bool,
        typer.Option(
            "--tunnel",
            help="Serve on the box's loopback only, reached through an SSH tunnel (vast: ask for no public port).",
        ),
    ] = False,
    local_hf_token_file: Annotated[
        Path | None,
        typer.Option(
            "--hf-token-file",
            help="The Hugging Face token's file, for a gated model [default: HF_TOKEN, then `hf auth login`'s file].",
            show_default=False,
        ),
    ] = None,
    idle_destroy: Annotated[
        str | None,
        typer.Option(
            help="The box destroys itself after this long without a request [default: 60m on vast].", show_default=False
        ),
    ] = None,
    max_hours: Annotated[
        float | None, typer.Option(help="The box destroys itself after this many hours.", show_default=False)
    ] = None,
    max_spend: Annotated[
        float | None, typer.Option(help="The box destroys itself once it cost this many USD.", show_default=False)
    ] = None,
    watchdog: Annotated[
        bool, typer.Option(help="Start the box's watchdog (--no-watchdog: the box bills until `deploy teardown`).")
    ] = True,
    replicas: Annotated[
        int | None,
        typer.Option(help="Provision a fleet of N replicas in parallel (see `deploy gateway`).", show_default=False),
    ] = None,
    fleet: Annotated[str, typer.Option(help="--replicas: the fleet's name.")] = "default",
    interruptible: c.Interruptible = False,
    bid: c.Bid = None,
    bid_over_min: c.BidOverMin = None,
    on_demand_min: Annotated[
        int, typer.Option(help="--replicas --interruptible: keep at least this many replicas on demand.")
    ] = 0,
    json_: c.Json = False,
) -> None:
    """Rent a box, get the runtime onto it, tune it, start it and wait for /ready; record everything in the ledger.

    Steps: rent, wait_running, connect, check, then (unless --no-runtime) push, install, autotune, start, ready.

    Offers are tried cheapest first; a box that fails is destroyed (unless --keep-on-failure) and the next is tried.

    Examples:
      deploy provision --gpu 4090 --max-price 0.5
      deploy provision --gpu 4090 --tunnel        # no public port: reach it with `deploy tunnel ID`
      deploy provision --provider local
      deploy provision --provider ssh --host 203.0.113.7 --port 2222 --gpu 4090
      deploy provision --provider local --model tiny-random --autotune-args "--compile off"
      deploy provision --gpu 4090 --image ghcr.io/me/csm-runtime:0.1.0     # image mode: nothing installed
      deploy provision --gpu 4090 --interruptible --bid-over-min 20     # bid 20% over the offer's minimum
      deploy provision --gpu 4090 --replicas 4 --interruptible --on-demand-min 1   # 1 on demand, 3 at a bid
    """
    from deploy.cancel import handle_signals
    from deploy.fleet.model import FleetSpec
    from deploy.providers.records import SshHost
    from deploy.provision.layout import runtime_torch
    from deploy.provision.options import ProvisionOptions, RuntimeOptions, Watchdog, check_bid, check_torch

    s = c.settings()
    gpus = [g.strip() for g in (gpu or "").split(",") if g.strip()]  # `4090,3090`: the next type when one runs out
    for alias in gpus:
        c.gpu(alias)
    price, disk_gb = c.price(max_price), c.positive("--disk", disk)
    offers_to_try = int(c.positive("--max-offers", max_offers) or s.max_offers)
    ready_s, ssh_s = c.positive("--ready-timeout", ready_timeout), c.positive("--ssh-timeout", ssh_timeout)
    runtime_s = c.positive("--runtime-timeout", runtime_timeout)
    idle_off = (idle_destroy or "").strip().lower() == "off"
    limits = Watchdog(
        idle_s=None if idle_off else c.duration("--idle-destroy", idle_destroy),
        max_hours=c.positive("--max-hours", max_hours),
        max_spend_usd=c.positive("--max-spend", max_spend),
    )
    ssh = SshHost(host=host, port=port, user=user)
    bid_usd_h, bid_pct = c.number("--bid", bid), c.number("--bid-over-min", bid_over_min)
    check_bid(interruptible, bid_usd_h, bid_pct)
    prov = c.provider(provider, ssh)
    if on_demand_min and replicas is None:
        raise UsageError("--on-demand-min applies to a fleet: add --replicas N")
    if interruptible and not prov.takes_bids:
        raise UsageError(f"the {provider} provider has no interruptible (bid) boxes: drop --interruptible")
    if prov.needs_gpu and not gpus:
        raise UsageError(f"--gpu is required for the {provider} provider (e.g. --gpu 4090)")
    image = image or s.image
    runtime_options = None
    if runtime:
        runtime_options = RuntimeOptions.resolve(
            prov,
            image=image,
            model=model,
            mode=runtime_mode,
            port=server_port,
            autotune=autotune,
            autotune_quick=autotune_quick,
            autotune_args=autotune_args,
            box_python=box_python,
            box_site_packages=box_site_packages,
            runtime_timeout_s=runtime_s,
            tunnel=tunnel,
            local_hf_token_file=_hub_token_file(local_hf_token_file, model),
            watchdog=_watchdog(prov, limits, enabled=watchdog, idle_off=idle_off),
        )
    if runtime:  # every GPU the command may rent, before anything is rented
        pinned = runtime_torch()
        for alias in gpus:
            check_torch(c.gpu(alias), pinned)
    options = ProvisionOptions.from_settings(
        s,
        provider=provider,
        gpu=c.gpu(gpus[0]) if gpus else None,
        max_price=price,
        image=image,
        disk_gb=disk_gb,
        max_offers=offers_to_try,
        ready_timeout_s=ready_s,
        ssh_timeout_s=ssh_s,
        keep_on_failure=keep_on_failure,
        runtime=runtime_options,
        ssh=ssh,
        interruptible=interruptible,
        bid_usd_h=bid_usd_h,
        bid_over_min_pct=bid_pct,
    )
    # SIGINT, SIGTERM and SIGHUP each stop the flow, which destroys what it rented (deploy/cancel.py); a fleet's
    # rollbacks run in its replicas' threads and always finish.
    with handle_signals(abandon=replicas is None):
        if replicas is not None or len(gpus) > 1:  # a fleet, or one replica with GPU fallback
            spec = FleetSpec(provider, tuple(gpus), options, on_demand_min=on_demand_min)
            return _provision_fleet(s, spec, fleet, replicas, json_)
        _provision_one(s, options, prov, json_)


def _watchdog(prov, limits, *, enabled: bool, idle_off: bool):
    """The box's watchdog: on by default (idle 60 min) where the provider lets a box end itself; asking for one
    where it cannot is an error, not a silent no-op. `--idle-destroy off` keeps only the caps."""
    import dataclasses

    from deploy.provision.options import DEFAULT_IDLE_S

    asked = limits.idle_s is not None or limits.max_hours is not None or limits.max_spend_usd is not None
    if not enabled:
        if asked:
            raise UsageError("--no-watchdog with --idle-destroy/--max-hours/--max-spend: choose one")
        return None
    if not prov.can_self_destroy:
        if asked:
            raise UsageError(f"the {prov.name} provider's boxes cannot destroy themselves: no watchdog there")
        return None
    if limits.idle_s is None and not idle_off:
        limits = dataclasses.replace(limits, idle_s=DEFAULT_IDLE_S)
    if limits.idle_s is None and limits.max_hours is None and limits.max_spend_usd is None:
        raise UsageError("--idle-destroy off with no --max-hours or --max-spend: use --no-watchdog instead")
    return limits


def _hub_token_file(path: Path | None, model: str) -> str | None:
    """A named token file must be readable now, before anything is rented; no token at all for a Hub model is said
    now too (the box would be refused a gated checkpoint). The token itself is read again at `push`."""
    from deploy.provision.hub import missing_token_note, needs_hub
    from deploy.secrets.hub_token import find_hub_token

    if needs_hub(model) and find_hub_token(path) is None:
        output.progress(missing_token_note(model))
    return str(path.expanduser().resolve()) if path else None


def _provision_one(s, options, prov, json_: bool) -> None:
    from deploy.provision.driver import run_provision
    from deploy.provision.summary import box_text, summary, text

    with c.open_ledger() as ledger:
        ctx = run_provision(s, options, prov, ledger, log=output.progress)
        rental = ctx.refresh()
        if ctx.host is not None:
            ctx.host.close()
    info = summary(rental, ctx)
    if json_:
        output.emit_json(info)
    else:
        output.emit_text(text(rental, info) if options.runtime else box_text(rental))


def _provision_fleet(s, spec, fleet: str, replicas: int | None, json_: bool) -> None:
    from deploy.fleet.replicas import create_fleet, provision_one

    if replicas is None:
        rid = provision_one(s, spec, log=output.progress)
        return output.emit_text(f"ready: rental {rid}; `deploy status`, `deploy teardown {rid}`")
    result = create_fleet(s, fleet, spec, replicas, log=output.progress)
    if json_:
        return output.emit_json(result)
    names = ", ".join(f"{r['replica']} ({r['gpu_name']}, {r['rate_usd_h']:.3f} USD/h)" for r in result["replicas"])
    output.emit_text(f"fleet {fleet}: {names}; next: `deploy gateway start --fleet {fleet}`")
