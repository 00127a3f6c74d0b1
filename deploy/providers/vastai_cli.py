"""The only module that runs the `vastai` CLI. It returns typed records and raises `VastError` with the CLI's words.

The CLI lives in its own virtual environment (its pins clash with moshi's), so it is a subprocess, always `--raw`.
Its quirks, handled here once (docs/provisioning.md#what-the-flow-asks-of-vastai has the sources):
- it exits 0 on HTTP errors and prints `{"error": true, "status_code": N, "msg": ...}` on stderr (only the status and
  `msg` survive; a 429 has `msg: null`); a listing it cannot parse must never read as "no instances";
- `destroy` without `-y` silently aborts; `attach ssh` prints a Python repr (`{'success': False, ...}` included);
- `show instance` answers 404, `{"instances": null}` or a record vastai itself crashes on once an instance is gone;
- vast rate-limits each endpoint (vast_pacing.py): calls go through one gate, and calls that are safe to repeat are
  retried on 429, 5xx and timeouts with a bounded backoff; a create only on 429 (vast did not process it).
The API key is never put on its command line (it reads VAST_API_KEY or its own key file), so it cannot leak through
`ps` or our logs; the instance-scoped key a create returns is never kept or printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from deploy.cancel import shielded
from deploy.errors import DeployError
from deploy.providers.records import Box, Offer
from deploy.providers.vast_pacing import GATE, PACES, RETRY_STATUSES, Backoff, Gate, Pace
from deploy.providers.vast_records import parse_box, parse_literal, parse_offer

MIN_DIRECT_PORTS = 2  # a direct SSH port and the server's
LISTING_PAGE = 25  # instances per `show instances` page: vast's largest (vastai 1.9.1 clamps --limit to 1-25)
MAX_LISTING_PAGES = 400  # 10,000 instances: a listing longer than that is a loop, not an account


class VastError(DeployError):
    """The vastai CLI reported an error, or said something we cannot parse. `status_code` is the HTTP status;
    `timed_out`: no answer within the call's timeout (the request may or may not have reached vast)."""

    def __init__(self, message: str, *, status_code: int | None = None, command: str = "", timed_out: bool = False):
        self.status_code = status_code
        self.command = command
        self.timed_out = timed_out
        self.detail = message
        prefix = f"vastai {command}: " if command else "vastai: "
        super().__init__(prefix + message)

    @property
    def transient(self) -> bool:
        """vast was busy or broken for a moment (429, 5xx) or did not answer: the same call may work later."""
        return self.timed_out or self.status_code in RETRY_STATUSES


def find_vastai() -> str:
    """`VASTAI_BIN`, else the venv `make setup` builds next to this package, else PATH."""
    env = os.environ.get("VASTAI_BIN")
    if env:
        return env
    bundled = Path(__file__).resolve().parents[2] / ".venv-vastai" / "bin" / "vastai"
    if bundled.exists():
        return str(bundled)
    found = shutil.which("vastai")
    if found:
        return found
    raise VastError("the vastai CLI was not found: run `make setup`, or set VASTAI_BIN, or put vastai on PATH")


def api_key_source() -> str:
    """Where the CLI will take its key from, for `--show-config`; never the key itself."""
    if os.environ.get("VAST_API_KEY"):
        return "VAST_API_KEY"
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "vastai" / "vast_api_key"
    if config.exists() or (Path.home() / ".vast_api_key").exists():
        return str(config)
    return "missing"


def _error_from_stderr(stderr: str) -> dict[str, Any] | None:
    for line in reversed(stderr.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("error"):
                return obj
    return None


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


class VastCli:
    """Typed calls over `vastai ... --raw`, paced by the process's gate and retried where that is safe. Cheap to make.

    `retry_s`: how long one call keeps being retried after its first transient failure (DEPLOY_VAST_RETRY_S)."""

    def __init__(
        self, binary: str | None = None, *, timeout_s: float = 120.0, retry_s: float = 60.0, gate: Gate | None = None
    ):
        self.binary = binary or find_vastai()
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.gate = gate or GATE
        self.calls: list[tuple[str, float]] = []  # (command, seconds): what bench/ reads
        self.retries: list[tuple[str, str]] = []  # (command, why): every retry, for bench/ and tests

    # --- one call -------------------------------------------------------------------------------------------------
    def call(self, *args: str, repeatable: bool = True, deadline: float | None = None) -> str:
        """Run one command through the gate; return its stdout. A transient failure (429, 5xx, timeout) is tried
        again with backoff for `retry_s` (never past `deadline`) when `repeatable`; otherwise only a 429 is (vast
        refused it unprocessed). The last error is raised with how long it was tried."""
        command = " ".join(args[:2])
        pace = PACES.get(command, Pace())
        backoff = Backoff(self.retry_s, deadline=deadline)
        while True:
            try:
                with self.gate.turn(command, pace), shielded() if not repeatable else contextlib.nullcontext():
                    return self._once(args, command)  # a create finishes even when a signal stops the flow
            except VastError as exc:
                if not exc.transient or not (repeatable or exc.status_code == 429):
                    raise
                if exc.status_code == 429:
                    self.gate.hold(command, max(pace.interval_s, 1.0))
                delay = backoff.next_delay(max(pace.interval_s, 1.0) if exc.status_code == 429 else 1.0)
                if delay is None:
                    if backoff.tries <= 1:
                        raise
                    raise VastError(
                        f"{exc.detail} (tried {backoff.tries} times over {backoff.spent_s():.0f} s)",
                        status_code=exc.status_code,
                        command=command,
                        timed_out=exc.timed_out,
                    ) from None
                self.retries.append((command, exc.detail))
                time.sleep(delay)

    def run(
        self, *args: str, expect_output: bool = True, repeatable: bool = True, deadline: float | None = None
    ) -> Any:
        """`call`, parsed as JSON (None when `expect_output` is False and it printed nothing)."""
        command = " ".join(args[:2])
        out = self.call(*args, repeatable=repeatable, deadline=deadline).strip()
        if not out:
            if expect_output:
                raise VastError("printed nothing where JSON was expected", command=command)
            return None
        try:
            return json.loads(out)
        except ValueError:
            raise VastError(f"unparseable output: {_short(out)}", command=command) from None

    def _once(self, args: tuple[str, ...], command: str) -> str:
        env = dict(os.environ, VASTAI_NO_UPDATE_CHECK="1")
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [self.binary, *args, "--raw"],
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                process_group=0,  # the terminal's Ctrl-C/hangup reach `deploy` only: a destroy in flight is not killed
                timeout=self.timeout_s,
                env=env,
            )
        except subprocess.TimeoutExpired:
            raise VastError(f"no answer within {self.timeout_s:.0f} s", command=command, timed_out=True) from None
        except OSError as exc:
            raise VastError(f"cannot run {self.binary}: {exc.strerror}", command=command) from None
        finally:
            self.calls.append((command, time.monotonic() - started))
        err = _error_from_stderr(proc.stderr)
        if err is not None:
            code = err.get("status_code") or None
            msg = err.get("msg")
            if code == 401:
                text = f"vast.ai rejected the API key (HTTP 401: {msg}); set VAST_API_KEY or run `vastai set api-key`"
            elif code == 429:
                text = f"HTTP 429: {msg or 'API requests too frequent'} (vast's rate limit)"
            elif code:
                text = f"HTTP {code}: {msg or '(no message)'}"
            else:
                text = f"unreadable answer from vast.ai ({msg or err.get('error')})"
            raise VastError(text, status_code=code, command=command)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["(no message)"]
            raise VastError(f"exit {proc.returncode}: {_short(lines[-1])}", command=command)
        return proc.stdout

    # --- offers -------------------------------------------------------------------------------------------------
    def search_offers(
        self,
        vast_gpu_name: str,
        *,
        max_price: float | None = None,
        min_reliability: float | None = None,
        min_cuda: float | None = None,
        disk_gb: float | None = None,
        min_inet_down: float | None = None,
        min_direct_ports: int | None = MIN_DIRECT_PORTS,
        limit: int = 20,
        bid: bool = False,
    ) -> list[Offer]:
        """Every filter is a field of vast's offer table (an unknown one may be ignored by vast, or refused).
        `bid`: interruptible offers (`--type bid`), cheapest `min_bid` first; `max_price` then bounds the min_bid."""
        query = [f"gpu_name={vast_gpu_name.replace(' ', '_')}", "num_gpus=1", "rentable=true"]
        if min_reliability is not None:
            query.append(f"reliability>={min_reliability}")
        if min_cuda is not None:
            query.append(f"cuda_vers>={min_cuda}")
        if disk_gb is not None:
            query.append(f"disk_space>={disk_gb}")
        if max_price is not None:
            query.append(f"min_bid<={max_price}" if bid else f"dph<={max_price}")
        if min_inet_down:
            query.append(f"inet_down>={min_inet_down:g}")
        if min_direct_ports:
            query.append(f"direct_port_count>={int(min_direct_ports)}")
        args = ["search", "offers", " ".join(query), "-o", "min_bid" if bid else "dph", "--limit", str(limit)]
        if disk_gb is not None:
            args += ["--storage", str(disk_gb)]
        if bid:
            args += ["--type", "bid"]
        rows = self.run(*args)
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "id" in r for r in rows):
            raise VastError(f"malformed offer list: {_short(json.dumps(rows))}", command="search offers")
        offers = [parse_offer(r) for r in rows]
        if bid:
            offers = [o for o in offers if o.min_bid_usd_h is not None]
            return sorted(offers, key=lambda o: (o.min_bid_usd_h or 0.0, o.price_usd_h))
        return sorted(offers, key=lambda o: o.price_usd_h)

    # --- instances ----------------------------------------------------------------------------------------------
    def create_instance(
        self,
        offer_id: str,
        *,
        image: str,
        disk_gb: float,
        label: str,
        onstart: str | None = None,
        ports: tuple[int, ...] = (),
        user: str | None = None,
        bid_usd_h: float | None = None,
        deadline: float | None = None,
    ) -> str:
        """SSH launch mode with direct SSH (`--ssh --direct`: runtype `ssh_direc ssh_proxy`; `--ssh` alone is the
        proxy, which maps no port), `--cancel-unavail` (else a placement that fails leaves a stopped instance that
        bills its disk). `ports`: box ports to map to public ones, as docker's `-p P:P` in the env field (vastai
        sends `{"-p P:P": "1"}`); vast picks the public port and reports it in `ports`. `user`: the container user
        (root for an image whose Dockerfile ends with another USER: vast's injected sshd needs root). `bid_usd_h`:
        an interruptible instance at this bid (`--bid_price`; without it vast rents on-demand even a bid offer).
        Raises VastError; only a 429 is retried (any other failure may or may not have created an instance)."""
        args = ["create", "instance", str(offer_id), "--image", image, "--disk", str(disk_gb), "--label", label]
        args += ["--ssh", "--direct", "--cancel-unavail"]
        if user:
            args += ["--user", user]
        if onstart:
            args += ["--onstart-cmd", onstart]
        if ports:
            args += ["--env", " ".join(f"-p {int(p)}:{int(p)}" for p in ports)]
        if bid_usd_h is not None:
            args += ["--bid_price", f"{float(bid_usd_h):.6g}"]
        res = self.run(*args, repeatable=False, deadline=deadline)
        if not isinstance(res, dict) or not res.get("success") or not res.get("new_contract"):
            keys = sorted(res) if isinstance(res, dict) else type(res).__name__
            raise VastError(f"create did not return an instance id (answer keys: {keys})", command="create instance")
        return str(res["new_contract"])

    def attach_ssh(self, instance_id: str, public_key: str, *, tries: int = 4) -> None:
        """Add our public key to the instance. vastai prints the answer as a Python repr (`{'success': True}`), even
        with --raw; a `{'success': False, ...}` is retried (same box) with backoff, then raised with vast's msg."""
        key = public_key.strip()
        if not key.startswith("ssh-"):
            raise VastError("refusing to attach something that is not an SSH public key", command="attach ssh")
        backoff = Backoff(self.retry_s)
        for attempt in range(1, tries + 1):
            answer = parse_literal(self.call("attach", "ssh", str(instance_id), key))
            if isinstance(answer, dict) and answer.get("success") is True:
                return
            why = answer.get("msg") or answer.get("error") if isinstance(answer, dict) else None
            why = str(why or f"unreadable answer {_short(repr(answer))}")
            delay = backoff.next_delay(1.0)
            if attempt == tries or delay is None:
                raise VastError(f"vast did not add our SSH key after {attempt} tries: {why}", command="attach ssh")
            self.retries.append(("attach ssh", why))
            time.sleep(delay)

    def show_instances(self, *, label: str | None = None, deadline: float | None = None) -> list[Box]:
        """Every instance of the account (only those labelled `label` exactly, where given: vast filters), one page
        of 25 per call. Left to itself vastai fetches every page back to back, and vast's per-endpoint limit
        (1 s) refuses page 2 with a 429 its three quick retries do not outlast; here each page is its own call
        through the gate (so paced) and retried like any listing. vast pages by keyset (`next_token`), so an
        instance made or ended between two pages neither repeats nor hides another."""
        boxes: list[Box] = []
        token: str | None = None
        tokens: set[str] = set()
        for _ in range(MAX_LISTING_PAGES):
            args = ["show", "instances", "--limit", str(LISTING_PAGE)]
            if token:
                args += ["--next-token", token]
            if label is not None:
                args += ["--label", label]
            page = self.run(*args, deadline=deadline)
            rows = page.get("instances") if isinstance(page, dict) else None
            # the fields vastai's own fetch-all reads from every row (it crashes without them); single pages it
            # prints as vast sent them
            if not isinstance(rows, list) or not all(
                isinstance(r, dict) and {"id", "start_date"} <= r.keys() for r in rows
            ):
                raise VastError(f"malformed instance listing: {_short(json.dumps(page))}", command="show instances")
            boxes.extend(parse_box(r) for r in rows)
            token = page.get("next_token") or None
            if token is None:
                return boxes
            if not rows or not isinstance(token, str) or token in tokens:
                raise VastError(
                    f"the listing's pages do not end (next_token {_short(str(token), 40)})", command="show instances"
                )
            tokens.add(token)
        raise VastError(f"the listing did not end within {MAX_LISTING_PAGES} pages", command="show instances")

    def show_instance(self, instance_id: str, *, deadline: float | None = None) -> Box | None:
        """The instance, or None where vast says it is gone: 404, `{"instances": null}`, an empty or non-object
        record (vastai crashes with a KeyError on `{"instances": {}}`). A record whose status words say destroyed
        comes back with State.GONE. Callers confirm "gone" against the listing (`show instances`)."""
        try:
            res = self.run("show", "instance", str(instance_id), deadline=deadline)
        except VastError as exc:
            if exc.status_code == 404 or (exc.status_code is None and "KeyError" in exc.detail):
                return None
            raise
        if isinstance(res, dict) and "instances" in res and not res["instances"]:
            return None
        if not isinstance(res, dict) or not res:
            return None
        if "id" not in res:
            raise VastError(f"malformed instance record: {_short(json.dumps(res))}", command="show instance")
        return parse_box(res)

    def destroy_instance(self, instance_id: str, *, deadline: float | None = None) -> None:
        # `-y` matters: without it the CLI reads stdin, prints "Aborted." and exits 0 having done nothing.
        self.run("destroy", "instance", str(instance_id), "-y", expect_output=False, deadline=deadline)

    # --- billing ------------------------------------------------------------------------------------------------
    def charges(self, start: float, end: float) -> list[dict[str, Any]]:
        """Instance charge rows between two unix times, as vast reports them (all pages)."""
        rows: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(50):
            args = ["show", "invoices-v1", "--charges", "-s", str(int(start)), "-e", str(int(end)), "-l", "100"]
            if token:
                args += ["--next-token", token]
            page = self.run(*args)
            if not isinstance(page, dict) or not isinstance(page.get("results"), list):
                raise VastError(f"malformed charges page: {_short(json.dumps(page))}", command="show invoices-v1")
            rows.extend(page["results"])
            token = page.get("next_token")
            if not token:
                break
        return rows
