"""vast.ai, through the vastai CLI wrapper in deploy/providers/vastai_cli.py (the only code that runs it).

What vast really does and what we do about it is in docs/provisioning.md#what-the-flow-asks-of-vastai; in short:
offers are filtered on download speed, open ports and the GPU family's CUDA floor; a create asks for direct SSH and
for no stopped instance when the machine cannot start one; an offer is "taken" only on 404/410 or vast's
`no_such_ask`, any other refusal stops the search; a create that errored, whatever the answer, is looked for by its
label first (vastai re-sends a create by itself, so "taken" may follow our own box's create); a box is ready only
when `actual_status` says running; a destroyed instance is gone when vast says so and its listing agrees.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from deploy.errors import OfferUnavailableError, ProviderError, RequestRefusedError
from deploy.providers.base import DirectAddress, Log, OfferQuery, Provider, RentRequest
from deploy.providers.records import TERMINAL, Box, Charge, Offer, SshHost, State
from deploy.providers.vast_records import charges_by_instance
from deploy.providers.vast_ssh import authorized_key_onstart, open_by_route
from deploy.providers.vastai_cli import VastCli, VastError, api_key_source

if TYPE_CHECKING:
    from deploy.ledger import Ledger, Rental
    from deploy.remote.host import Host
    from deploy.settings import DeploySettings

CREDIT_HINT = "add credit at https://cloud.vast.ai/billing/"
RUNNING_FILE = ".csm-deploy-running"  # in the box's home: the unix time its container first started
INSTANCE_ENV_FILE = ".csm-deploy-instance.env"  # in the box's home: csm_runtime/watchdog.py INSTANCE_ENV_FILE
# What every vast box runs when its container starts (vast runs the onstart after its own sshd setup; readable back
# in `show instance`, so never a secret in it):
# - when the container first started, by the box's clock (the GPU bills from `running`),
# - ~/.no_auto_tmux: vast's SSH images wrap every SSH session in tmux unless it exists, and without a terminal
#   `ssh box cmd` then runs nothing (vast-ai/base-image README; docs guides/instances/connect/ssh),
# - vast's instance-scoped credentials, which only the container's PID 1 environment holds, saved 0600 for the box's
#   watchdog (an SSH session does not inherit them); the values go to the file, never to the output.
# The start time is the onstart shell's own process start (uptime-based, 10 ms steps), not the time a later
# command gets to run on a busy box; plain `date` where /proc cannot say.
STARTED = (
    'awk -v now="$(date +%s.%N)" -v hz="$(getconf CLK_TCK)" \'NR==FNR {up=$1; next} '
    '{sub(/.*\\) /, ""); split($0, f, " "); printf "%.3f\\n", now - (up - f[20] / hz)}\' '
    "/proc/uptime /proc/$$/stat"
)
ONSTART = (
    f"[ -s ~/{RUNNING_FILE} ] || {{ {STARTED} || date +%s.%N; }} > ~/{RUNNING_FILE}; "
    "touch ~/.no_auto_tmux; "
    f"(umask 077; env | grep -E '^CONTAINER_(ID|API_KEY)=' > ~/{INSTANCE_ENV_FILE}; chmod 600 ~/{INSTANCE_ENV_FILE})"
)


def _onstart(request: RentRequest) -> str:
    """ONSTART, our public key into ~/.ssh/authorized_keys (vast_ssh.py), then the request's own."""
    parts = [ONSTART]
    if request.ssh_public_key:
        parts.append(authorized_key_onstart(request.ssh_public_key))
    if request.onstart:
        parts.append(request.onstart)
    return "; ".join(parts)


def offer_gone(exc: VastError) -> bool:
    """vast's "this offer is no longer rentable": 404 (no_such_ask), 410 (no_such_ask, with cancel_unavail)."""
    return exc.status_code in (404, 410) or "no_such_ask" in exc.detail


class VastProvider(Provider):
    name = "vast"
    needs_gpu = True
    maps_ports = True
    can_self_destroy = True  # CONTAINER_API_KEY in the container destroys that one instance
    takes_bids = True  # interruptible instances at a bid (vast_bids.py)

    def __init__(
        self,
        cli: VastCli | None = None,
        *,
        timeout_s: float = 120.0,
        retry_s: float = 60.0,
        min_inet_down: float | None = None,
        create_window_s: float = 600.0,
    ):
        self._cli, self.timeout_s, self.retry_s = cli, timeout_s, retry_s
        self.min_inet_down = min_inet_down
        self.create_window_s = create_window_s
        self._keys: dict[str, str] = {}  # instance id -> our public key, attached again once it runs

    @property
    def cli(self) -> VastCli:
        """The CLI wrapper, found on first use (so a bad option is reported before a missing CLI)."""
        if self._cli is None:
            self._cli = VastCli(timeout_s=self.timeout_s, retry_s=self.retry_s)
        return self._cli

    @classmethod
    def from_settings(cls, settings: DeploySettings, ssh: SshHost | None = None) -> VastProvider:
        return cls(
            timeout_s=settings.vast_timeout_s,
            retry_s=settings.vast_retry_s,
            min_inet_down=settings.min_inet_down,
            create_window_s=settings.vast_create_window_s,
        )

    @classmethod
    def configured(cls, settings: DeploySettings) -> bool:
        return api_key_source() != "missing"

    def search(self, query: OfferQuery) -> list[Offer]:
        if query.gpu is None:
            raise ProviderError("vast needs --gpu to search offers")
        floors = [c for c in (query.min_cuda, query.gpu.min_cuda) if c is not None]
        return self.cli.search_offers(
            query.gpu.vast_name,
            max_price=query.max_price,
            min_reliability=query.min_reliability,
            min_cuda=max(floors) if floors else None,
            disk_gb=query.disk_gb,
            min_inet_down=self.min_inet_down,
            limit=query.limit,
            bid=query.interruptible,
        )

    def rent(self, offer: Offer, request: RentRequest, on_created: Callable[[str], None] = lambda _id: None) -> str:
        try:
            iid = self.cli.create_instance(
                offer.id,
                image=request.image,
                disk_gb=request.disk_gb,
                label=request.label,
                onstart=_onstart(request),
                ports=request.ports,
                user=request.user,
                bid_usd_h=request.bid_usd_h,
            )
        except VastError as exc:
            iid = self._after_failed_create(offer, request, exc)
        on_created(iid)
        if request.ssh_public_key:
            self._keys[iid] = request.ssh_public_key
            with contextlib.suppress(VastError):  # while it loads: may be refused or not applied (vast_ssh.py)
                self.cli.attach_ssh(iid, request.ssh_public_key, tries=1)
        return iid

    def _after_failed_create(self, offer: Offer, request: RentRequest, exc: VastError) -> str:
        """A create that errored may still have rented a box, whatever the answer: vastai re-sends a create on
        502/503/504 and connection errors by itself, so a create that went through and then answered 502 ends in
        the re-send's 404 `no_such_ask`. Our label is looked up first, in a listing taken after the call ended; a
        box that carries it is ours (its id is returned). Only then does the answer say what happened: the offer
        was taken (next offer), vast refused us (stop), or the answer was lost (5xx, timeout, unreadable)."""
        try:
            match = [b for b in self.cli.show_instances() if b.label == request.label and b.state is not State.GONE]
        except VastError as listing:
            raise ProviderError(
                f"create of offer {offer.id} failed ({exc}) and the listing failed too ({listing}): an instance "
                f"labelled {request.label} may exist; `deploy status` finds it, `deploy teardown --all` ends it"
            ) from exc
        if match:
            return match[0].id
        if offer_gone(exc):
            raise OfferUnavailableError(f"offer {offer.id} was not rentable: {exc}") from exc
        code = exc.status_code
        if code == 429:
            raise RequestRefusedError(f"vast kept refusing the create as too frequent: {exc}") from exc
        if code is not None and 400 <= code < 500:
            hint = f" ({CREDIT_HINT})" if "credit" in exc.detail.lower() or code in (402, 411) else ""
            raise RequestRefusedError(f"vast refused the create of offer {offer.id}: {exc}{hint}") from exc
        raise ProviderError(f"create of offer {offer.id} failed ({exc}) and no instance carries our label") from exc

    def wait_ready(
        self, provider_id: str, *, deadline: float, poll_s: float, log: Log, seen: Callable[[Box], None] | None = None
    ) -> Box:
        last = "not polled yet"
        while True:
            try:
                box, last = self._poll(provider_id, deadline, seen or (lambda _box: None))
            except VastError as exc:
                if exc.status_code in (401, 403):
                    raise
                box, last = None, f"poll failed: {exc}"  # still failing after its retries: poll on to the deadline
            if box is not None and box.state is State.RUNNING:
                log(f"vast instance {provider_id}: running (1/1 ready)")
                self._attach_when_running(provider_id, log)
                return box
            if box is not None and box.state in TERMINAL:
                raise ProviderError(f"vast instance {provider_id} will not run: {last}")
            if time.monotonic() >= deadline:
                raise ProviderError(f"vast instance {provider_id} was not running before the deadline (last: {last})")
            log(f"vast instance {provider_id}: {last} (0/1 ready, {deadline - time.monotonic():.0f} s left)")
            time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))

    def _attach_when_running(self, provider_id: str, log: Log) -> None:
        """Our key again, now that the container runs (one attached while it loaded may never have reached it). A
        refusal is not fatal: the onstart puts the key in place too, and SSH is what tells."""
        key = self._keys.get(provider_id)
        if key is None:
            return
        try:
            self.cli.attach_ssh(provider_id, key)
        except VastError as exc:
            log(f"vast instance {provider_id}: {exc}; SSH relies on the key the onstart installs")
            return
        self._keys.pop(provider_id, None)

    def _poll(self, provider_id: str, deadline: float, seen: Callable[[Box], None]) -> tuple[Box | None, str]:
        """One look at a box we wait for: (the box when it runs with an SSH endpoint or can never run, else None,
        and what it said). Raises when it is gone."""
        box = self.cli.show_instance(provider_id, deadline=deadline)
        if box is not None and box.state is not State.GONE:
            seen(box)
        if box is None or box.state is State.GONE:
            if self._gone(provider_id, box):
                raise ProviderError(f"vast instance {provider_id} disappeared while we waited for it to run")
            return None, "vast did not show the instance, though its listing has it"
        said = f"{box.raw_status}{': ' + box.detail if box.detail else ''}"
        if box.state is State.RUNNING and not (box.ssh_host and box.ssh_port):
            return None, f"{said} (no SSH endpoint yet)"
        return (box if box.state is State.RUNNING or box.state in TERMINAL else None), said

    def destroy(self, provider_id: str, *, deadline: float, poll_s: float = 1.0) -> float | None:
        """Destroy (retried on 429/5xx by the wrapper; 404 = gone already), then confirm it is gone: the listing no
        longer has it (or lists it destroyed); where vast gives no readable listing, `show instance` saying gone
        (404, null, an empty record, destroyed) stands. Returns when the accepted destroy call returned (vastai
        exits a second or more after vast answered: `deploy cost` narrows it to the end of vast's charge rows), or
        for one that was already gone, where its charges end (None if they do not say)."""
        answered: float | None = None
        try:
            self.cli.destroy_instance(provider_id, deadline=deadline)
            answered = time.time()
        except VastError as exc:
            if exc.status_code != 404:  # already gone is what we wanted
                raise
        while True:
            try:
                if self._confirmed_gone(provider_id, deadline):
                    break
                last = "still listed"
            except VastError as exc:
                if exc.status_code in (401, 403) or time.monotonic() >= deadline:
                    raise
                last = str(exc)
            if time.monotonic() >= deadline:
                raise ProviderError(f"vast instance {provider_id} is still there ({last}) after its destroy")
            time.sleep(poll_s)
        return answered if answered is not None else self._ended_or_none(provider_id)

    def _confirmed_gone(self, provider_id: str, deadline: float) -> bool:
        try:
            listed = {b.id for b in self.cli.show_instances(deadline=deadline) if b.state is not State.GONE}
        except VastError as exc:
            if exc.transient:
                raise
            box = self.cli.show_instance(provider_id, deadline=deadline)  # no readable listing: show's word
            return box is None or box.state is State.GONE
        return provider_id not in listed

    def _gone(self, provider_id: str, box: Box | None) -> bool:
        """`show instance` said gone: true unless the listing still has the id. A listing vast (or vastai) cannot
        give in a readable form leaves show's word standing; a transient failure is raised (the caller retries)."""
        try:
            listed = {b.id for b in self.cli.show_instances() if b.state is not State.GONE}
        except VastError as exc:
            if exc.transient:
                raise
            return True
        return provider_id not in listed

    def _ended_or_none(self, provider_id: str) -> float | None:
        try:
            return self.ended_at(provider_id)
        except VastError:
            return None

    def list_owned(self, label_prefix: str) -> list[Box]:
        return [b for b in self.cli.show_instances() if (b.label or "").startswith(label_prefix + ":")]

    def get(self, provider_id: str) -> Box | None:
        box = self.cli.show_instance(provider_id)
        return None if box is None or box.state is State.GONE else box

    def open_host(
        self, rental: Rental, settings: DeploySettings, ledger: Ledger, *, timeout_s: float, poll_s: float, log: Log
    ) -> Host:
        """SSH by the route that answers: the box's own address, else vast's proxy (vast_ssh.py)."""

        def make(target: Rental, connect_timeout: float):
            return self.host(target, settings, ledger, connect_timeout=min(connect_timeout, timeout_s))

        return open_by_route(make, rental, ledger, timeout_s=timeout_s, poll_s=poll_s, log=log)

    def direct_address(self, box: Box | None, port: int) -> DirectAddress | None:
        """The public address vast mapped the server's port to (`ports`, `public_ipaddr`); the server binds 0.0.0.0
        for it, behind its token."""
        if box is None or not box.public_ip or port not in box.ports:
            return None
        return DirectAddress(box.public_ip, box.ports[port], "0.0.0.0")

    def box_started_at(self, host: Host) -> float | None:
        """The time our onstart wrote when the container first started (the box's clock)."""
        res = host.run(f"cat ~/{RUNNING_FILE} 2>/dev/null || true", stream=False, check=False, timeout=30)
        try:
            return float(res.stdout.strip().splitlines()[0])
        except (ValueError, IndexError):
            return None

    def ended_at(self, provider_id: str) -> float | None:
        """The end of the instance's charge rows (vast bills until the destroy)."""
        now = time.time()
        charge = charges_by_instance(self.cli.charges(now - 30 * 86400, now + 60)).get(str(provider_id))
        return charge.end if charge else None

    def charges(self, start: float, end: float) -> dict[str, Charge]:
        return charges_by_instance(self.cli.charges(start, end))
