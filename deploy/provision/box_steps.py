"""The box steps every provision runs: rent -> wait_running -> connect -> check.

`rent` writes the intent row (with the label the rental will carry) before the create call and the provider's id
right after it; a create that errors may still have gone through, so the box is looked for by its label. The cost
clock: the rental starts at the provider's own start time (else the create call), the box runs (where the GPU bills
apart from the disk) from when the box itself says its container started, else from the first poll that saw it
running.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from deploy import ledger as L
from deploy.errors import OfferUnavailableError, ProvisionCancelled, RequestRefusedError, UsageError
from deploy.ledger import records
from deploy.providers import RentRequest
from deploy.providers.records import Box
from deploy.provision.context import Context, Step
from deploy.provision.options import is_runtime_image
from deploy.settings import DeploySettings

HOURS_PER_MONTH = 30 * 24  # vast prices storage per GB per month


def ensure_ssh_key(settings: DeploySettings) -> str:
    """The public half of our SSH key, made on first use under DEPLOY_HOME (an explicit DEPLOY_SSH_KEY must exist)."""
    key = settings.ssh_key_path
    if not key.exists():
        if settings.ssh_key:
            raise UsageError(f"SSH key {key} does not exist")
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "csm-deploy", "-f", str(key)],
            check=True,
            stdin=subprocess.DEVNULL,
        )
    pub = Path(str(key) + ".pub")
    if not pub.exists():
        raise UsageError(f"SSH public key {pub} is missing")
    return pub.read_text().strip()


def step_rent(ctx: Context) -> None:
    """Intent row first (with the label the rental will carry), then the create call, then the id."""
    s, o, opts = ctx.settings, ctx.offer, ctx.options
    image = opts.rent_image
    disk_rate = None if o.storage_usd_gb_month is None else o.storage_usd_gb_month * opts.disk_gb / HOURS_PER_MONTH
    bid = opts.bid_for(o)  # an interruptible rental bills its bid (plus the disk), not the offer's on-demand price
    rate = o.price_usd_h if bid is None else bid + (disk_rate or 0.0)
    ctx.rental = ctx.ledger.record_intent(
        attempt_id=ctx.attempt_id,
        provider=ctx.provider.name,
        label_prefix=s.label_prefix,
        offer_id=o.id,
        host_id=o.host_id or None,
        gpu=opts.gpu.alias if opts.gpu else None,
        gpu_name=o.gpu_name,
        rate_usd_h=rate,
        disk_usd_h=disk_rate,
        # until then a create this row starts may still rent a box, even if this process is killed meanwhile
        meta=records.rent_intent(
            image=image, disk_gb=opts.disk_gb, create_lands_by=ctx.ledger.clock() + ctx.provider.create_window_s
        )
        | (records.bid_placed(bid) if bid is not None else {}),
    )
    label = ctx.rental.label or ""
    request = RentRequest(
        label=label,
        image=image,
        disk_gb=opts.disk_gb,
        ssh_public_key=ensure_ssh_key(s) if ctx.provider.uses_ssh else None,
        ports=_public_ports(ctx),
        # our own image ends with a non-root USER (docker/Dockerfile); SSH launch needs root in the container
        user="root" if is_runtime_image(image) else None,
        bid_usd_h=bid,
    )
    asked_at = ctx.ledger.clock()  # the clock starts at the create call unless the provider says otherwise

    def created(provider_id: str) -> None:
        ctx.rental = ctx.ledger.record_rented(ctx.rental_id, provider_id, started_at=asked_at)

    try:
        provider_id = ctx.provider.rent(o, request, on_created=created)
    except (OfferUnavailableError, RequestRefusedError) as exc:  # refused: nothing was created
        if ctx.refresh().provider_id is None:
            ctx.ledger.close_rental(ctx.rental_id, L.NOT_CREATED, str(exc))
        raise
    except BaseException:
        if ctx.refresh().provider_id is None:  # the create may have gone through before the error: by its label
            _adopt_by_label(ctx, label, asked_at)
        raise
    if ctx.refresh().provider_id != provider_id:
        ctx.rental = ctx.ledger.record_rented(ctx.rental_id, provider_id, started_at=asked_at)
    ctx.log(
        f"rented {ctx.provider.name} {provider_id} ({o.gpu_name}, {rate:.3f} USD/h{' interruptible' if bid else ''})"
        f" as ledger row {ctx.rental_id}"
    )


def _public_ports(ctx: Context) -> tuple[int, ...]:
    """Box ports to ask the provider to publish: the server's, where the provider maps ports and no --tunnel."""
    if ctx.runtime is None or ctx.runtime.tunnel or not ctx.provider.maps_ports:
        return ()
    return (ctx.runtime.server_port,)


def _adopt_by_label(ctx: Context, label: str, asked_at: float) -> None:
    try:
        owned = ctx.provider.list_owned(ctx.settings.label_prefix)
    except Exception:  # noqa: BLE001 - cannot tell: the intent row stays open for `status` / `teardown --all`
        return
    match = [b for b in owned if b.label == label]
    if match:
        started = match[0].started_at or asked_at
        ctx.rental = ctx.ledger.record_rented(ctx.rental_id, match[0].id, started_at=started)
    else:
        ctx.ledger.close_rental(ctx.rental_id, L.NOT_CREATED, "create failed and nothing carries our label")
        ctx.rental = ctx.refresh()


def step_wait_running(ctx: Context) -> None:
    deadline = time.monotonic() + ctx.options.ready_timeout_s
    clock_from = {"start": None}

    def seen(box: Box) -> None:
        """The provider's own start time, from the first look (a box that never runs still billed from then); a
        cancelled provision stops waiting at the next look (the ready deadline is long: vast pulls the image)."""
        if ctx.cancel is not None and ctx.cancel.is_set():
            raise ProvisionCancelled("cancelled while waiting for the box to run")
        if box.started_at and clock_from["start"] != box.started_at:
            clock_from["start"] = box.started_at
            ctx.ledger.set_started(ctx.rental_id, box.started_at, f"{ctx.provider.name}'s start time")

    box = ctx.provider.wait_ready(
        str(ctx.refresh().provider_id),
        deadline=deadline,
        poll_s=ctx.settings.poll_interval_s,
        log=ctx.log,
        seen=seen,
    )
    ctx.box = box
    seen(box)
    if ctx.refresh().running_at is None:
        ctx.ledger.set_running(ctx.rental_id, ctx.ledger.clock(), "the first poll that saw it running")
    ctx.ledger.record_connection(
        ctx.rental_id, ssh_host=box.ssh_host, ssh_port=box.ssh_port, ssh_user=box.ssh_user or ctx.settings.ssh_user
    )
    if routes := _ssh_routes(box):
        ctx.ledger.update_meta(ctx.rental_id, **records.ssh_routes(routes))
    ctx.refresh()


def _ssh_routes(box: Box) -> dict[str, str]:
    """The ways into the box its provider lists, for `connect` to choose from: the box's own address (`direct`) and
    a proxy in front of its sshd (`proxy`; vast's ssh_host:ssh_port)."""
    routes = {}
    if box.direct_ssh and box.ssh_host and box.ssh_port:
        routes["direct"] = f"{box.ssh_host}:{box.ssh_port}"
    if box.proxy_host and box.proxy_port:
        routes["proxy"] = f"{box.proxy_host}:{box.proxy_port}"
    return routes


def step_connect(ctx: Context) -> None:
    ctx.host = ctx.provider.open_host(
        ctx.refresh(),
        ctx.settings,
        ctx.ledger,
        timeout_s=ctx.options.ssh_timeout_s,
        poll_s=ctx.settings.poll_interval_s,
        log=ctx.log,
    )
    _refine_running(ctx)


def _refine_running(ctx: Context) -> None:
    """The box's own record of when its container started (vast: the onstart writes it), where it is earlier than
    the poll that saw it running and not before the rental itself started."""
    assert ctx.host is not None
    rental = ctx.refresh()
    try:
        since = ctx.provider.box_started_at(ctx.host)
    except Exception:  # noqa: BLE001 - a missing or odd file: the poll's time stands
        since = None
    start = rental.started_at or rental.created_at
    if since is None or since < start - 1.0 or since > ctx.ledger.clock():
        return
    if rental.running_at is None or since < rental.running_at:
        ctx.ledger.set_running(ctx.rental_id, max(since, start), "the box's own clock when its container started")


def step_check(ctx: Context) -> None:
    assert ctx.host is not None
    res = ctx.host.run(ctx.settings.check_command, timeout=ctx.settings.check_timeout_s, stream=False)
    first = (res.stdout.strip().splitlines() or [""])[0]
    ctx.check_output = res.stdout
    ctx.event("check", first)
    ctx.log(f"check: {first}")


BOX_STEPS: tuple[Step, ...] = (
    Step("rent", step_rent),
    Step("wait_running", step_wait_running),
    Step("connect", step_connect),
    Step("check", step_check),
)
