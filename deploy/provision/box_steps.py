"""The box steps every provision runs: rent -> wait_running -> connect -> check.

`rent` writes the intent row (with the label the rental will carry) before the create call and the provider's id
right after it; a create that errors may still have gone through, so the box is looked for by its label.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from deploy import ledger as L
from deploy.errors import OfferUnavailableError, UsageError
from deploy.providers import RentRequest
from deploy.provision.context import Context, Step
from deploy.settings import DeploySettings


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
    ctx.rental = ctx.ledger.record_intent(
        attempt_id=ctx.attempt_id,
        provider=ctx.provider.name,
        label_prefix=s.label_prefix,
        offer_id=o.id,
        host_id=o.host_id or None,
        gpu=opts.gpu.alias if opts.gpu else None,
        gpu_name=o.gpu_name,
        rate_usd_h=o.price_usd_h,
        meta={"image": opts.image, "disk_gb": opts.disk_gb},
    )
    label = ctx.rental.label or ""
    request = RentRequest(
        label=label,
        image=opts.image,
        disk_gb=opts.disk_gb,
        ssh_public_key=ensure_ssh_key(s) if ctx.provider.uses_ssh else None,
        ports=_public_ports(ctx),
    )
    asked_at = ctx.ledger.clock()  # the clock starts at the create call unless the provider says otherwise

    def created(provider_id: str) -> None:
        ctx.rental = ctx.ledger.record_rented(ctx.rental_id, provider_id, started_at=asked_at)

    try:
        provider_id = ctx.provider.rent(o, request, on_created=created)
    except OfferUnavailableError as exc:
        ctx.ledger.close_rental(ctx.rental_id, L.NOT_CREATED, str(exc))
        raise
    except BaseException:
        if ctx.refresh().provider_id is None:  # the create may have gone through before the error: by its label
            _adopt_by_label(ctx, label, asked_at)
        raise
    if ctx.refresh().provider_id != provider_id:
        ctx.rental = ctx.ledger.record_rented(ctx.rental_id, provider_id, started_at=asked_at)
    ctx.log(
        f"rented {ctx.provider.name} {provider_id} ({o.gpu_name}, {o.price_usd_h:.3f} USD/h) as ledger row {ctx.rental_id}"
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
    box = ctx.provider.wait_ready(
        str(ctx.refresh().provider_id), deadline=deadline, poll_s=ctx.settings.poll_interval_s, log=ctx.log
    )
    ctx.box = box
    if box.started_at:
        ctx.ledger.set_started(ctx.rental_id, box.started_at, f"{ctx.provider.name}'s start time")
    ctx.ledger.record_connection(
        ctx.rental_id, ssh_host=box.ssh_host, ssh_port=box.ssh_port, ssh_user=box.ssh_user or ctx.settings.ssh_user
    )
    ctx.refresh()


def step_connect(ctx: Context) -> None:
    ctx.host = ctx.provider.open_host(
        ctx.refresh(),
        ctx.settings,
        ctx.ledger,
        timeout_s=ctx.options.ssh_timeout_s,
        poll_s=ctx.settings.poll_interval_s,
        log=ctx.log,
    )


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
