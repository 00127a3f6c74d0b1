"""The `ready` step: the server listens on the box, then /ready answers 200 with the token, from here.

Directly where the provider says the port answers (a mapped public port, or this machine), else through an SSH
tunnel; a direct address that stays silent for DIRECT_PROBE_S falls back to the tunnel. A server on a public bind
serves HTTPS only: its certificate is copied back over SSH and pinned first (certificate.py), and every request here
trusts that certificate alone, so a server presenting another one never sees the token. A server that exits, fails
to load its model or never answers ends the step with the last lines of its log, and its own reason in one line.

A first start downloads the checkpoint (several GB for sesame/csm-1b): /ready says how far (hub.py) and the step
prints it; the deadline (`--runtime-timeout`) counts from the download's last progress, so a slow but moving
download is never cut off and a stalled one is.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

from deploy.errors import DeployError, RemoteError
from deploy.ledger import DIRECT, TUNNEL, records
from deploy.provision.certificate import fetch_and_pin, serves_tls
from deploy.provision.context import Context
from deploy.provision.hub import describe_download, download_bytes
from deploy.provision.layout import SERVER_LOG
from deploy.provision.options import RuntimeOptions
from deploy.remote.tls import client_context, is_certificate_error
from deploy.remote.tunnels import forward
from deploy.secrets.tokens import read_token_file

LOG_TAIL_LINES = 30
DIRECT_PROBE_S = 20.0  # how long a direct address may stay silent before the ready step falls back to the tunnel
DOWNLOAD_REPORT_S = 5.0  # how often the box's download progress is printed


def _q(text: str) -> str:
    return shlex.quote(text)


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
    """Between looks at the server; ends at once when the command's cancel token is set (a fleet's replica)."""
    seconds = min(ctx.settings.poll_interval_s, 1.0, max(0.0, deadline - time.monotonic()))
    if ctx.cancel is None:
        time.sleep(seconds)
    else:
        ctx.cancel.pause(seconds, "cancelled while waiting for the server")


def wait_box_server_listening(ctx: Context, opts: RuntimeOptions, deadline: float) -> None:
    """On the box: until the server's port accepts connections (uvicorn binds once the model is loaded), failing at
    once when the process is gone. A tunnel opened before that would only carry refusals."""
    pid = int(ctx.server_pid or ctx.refresh().server.pid)
    on_box = "127.0.0.1" if opts.bind == "0.0.0.0" else opts.bind
    probe = f"kill -0 {pid} 2>/dev/null || exit 7; (exec 3<>/dev/tcp/{on_box}/{opts.server_port}) 2>/dev/null || exit 8"
    polls = 0
    while True:
        polls += 1
        res = ctx.host.run(f"bash -c {_q(probe)}", stream=False, check=False, timeout=30)
        if res.exit_code == 0:
            ctx.log(f"the server listens on {opts.bind}:{opts.server_port} on the box after {polls} polls")
            return
        if res.exit_code == 7:
            last = show_log_tail(ctx)
            if last.startswith("Error: "):  # the runtime refused to start and said why in one line
                raise RemoteError(f"the server could not start: {last.removeprefix('Error: ')}")
            raise RemoteError(f"the server (pid {pid}) exited before /ready answered: {last}")
        if time.monotonic() >= deadline:
            raise RemoteError(
                f"the server did not listen on port {opts.server_port} within the deadline: {show_log_tail(ctx)}"
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


def certificate_refused(url: str, exc: BaseException) -> RemoteError:
    return RemoteError(
        f"{url} presented a TLS certificate other than the one the box holds (pinned over SSH): refusing to send the "
        f"token ({type(exc).__name__})"
    )


class DownloadClock:
    """Prints the box's download progress from /ready bodies, and moves the deadline on while it grows."""

    def __init__(self, ctx: Context, allowance_s: float) -> None:
        self.ctx, self.allowance_s = ctx, allowance_s
        self.bytes: int | None = None
        self.printed = 0.0

    def update(self, body: dict[str, Any], deadline: float) -> float:
        done = download_bytes(body)
        if done is None:
            return deadline
        now = time.monotonic()
        if self.bytes is not None and done > self.bytes:
            deadline = max(deadline, now + self.allowance_s)
        self.bytes = done if self.bytes is None else max(self.bytes, done)
        if now - self.printed >= DOWNLOAD_REPORT_S and (line := describe_download(body)):
            self.ctx.log(line)
            self.printed = now
        return deadline


def poll_ready(ctx: Context, url: str, token: str, deadline: float, *, verify: Any = True) -> dict[str, Any]:
    """GET /ready with the token until 200 (503 while loading or warming up). Returns /ready's JSON body. `verify`:
    the pinned certificate's SSL context for an https URL."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    polls, last = 0, "no answer yet"
    clock = DownloadClock(ctx, ctx.runtime.runtime_timeout_s if ctx.runtime else 900.0)
    while True:
        polls += 1
        try:
            r = httpx.get(url.rstrip("/") + "/ready", headers=headers, timeout=10.0, verify=verify)
            if r.status_code == 200:
                ctx.log(f"/ready answered 200 after {polls} polls (1/1 ready)")
                return _json(r)
            last = f"HTTP {r.status_code}"
            body = _json(r)
            deadline = clock.update(body, deadline)
            if body.get("status") in ("failed", "stopped"):  # the model did not load: waiting longer changes nothing
                why = body.get("error") or body["status"]
                show_log_tail(ctx)
                raise RemoteError(
                    f"the server could not load {ctx.runtime.model if ctx.runtime else 'the model'}: {why}"
                )
            if r.status_code in (401, 403):
                raise RemoteError(f"/ready refused our token ({last}): is another server on port {url}?")
        except httpx.HTTPError as exc:
            if is_certificate_error(exc):
                raise certificate_refused(url, exc) from None
            last = type(exc).__name__
        if time.monotonic() >= deadline:
            raise RemoteError(
                f"/ready did not answer 200 within the deadline ({polls} polls, last: {last}): {show_log_tail(ctx)}"
            )
        if polls % 10 == 0:
            ctx.log(f"waiting for /ready (0/1 ready, {last}, {deadline - time.monotonic():.0f} s left)")
        _pause(ctx, deadline)


def answers(url: str, deadline: float, *, within_s: float | None = None, verify: Any = True) -> str | None:
    """None once GET /health answers at all (any status) from here, else why not, tried for `within_s` at most:
    a mapped port that a firewall drops should fall back to the tunnel, not eat the whole ready deadline. A server
    that answers with another certificate than the pinned one is refused at once (RemoteError)."""
    import httpx

    until, why = min(deadline, time.monotonic() + (DIRECT_PROBE_S if within_s is None else within_s)), "not tried"
    while True:
        try:
            httpx.get(url + "/health", timeout=5.0, verify=verify)
            return None
        except httpx.HTTPError as exc:
            if is_certificate_error(exc):
                raise certificate_refused(url, exc) from None
            why = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= until:
            return why
        time.sleep(0.5)


def step_ready(ctx: Context) -> None:
    opts = ctx.runtime
    assert ctx.host is not None and opts is not None
    token = read_token_file(str(ctx.refresh().server.token_file))
    deadline = time.monotonic() + opts.runtime_timeout_s
    tls = serves_tls(opts.bind)
    scheme = "https" if tls else "http"
    on_box = f"{scheme}://{'127.0.0.1' if opts.bind == '0.0.0.0' else opts.bind}:{opts.server_port}"
    wait_box_server_listening(ctx, opts, deadline)
    verify = client_context(fetch_and_pin(ctx)) if tls else True  # the server wrote it before it listened
    public = f"{scheme}://{ctx.direct.host}:{ctx.direct.port}" if ctx.direct else None
    if public and (why := answers(public, deadline, verify=verify)) is not None:
        ctx.log(f"the server's port {public} does not answer from here ({why}): using the SSH tunnel instead")
        ctx.event("direct-unreachable", f"{public}: {why}")
        public = None
    if public:
        body, endpoint, access = poll_ready(ctx, public, token, deadline, verify=verify), public, DIRECT
    else:
        with forward(ctx.host, opts.server_port) as local_port:
            body = poll_ready(ctx, f"{scheme}://127.0.0.1:{local_port}", token, deadline, verify=verify)
        endpoint, access = on_box, TUNNEL
    ctx.ledger.update_meta(ctx.rental_id, **records.server_ready(endpoint=endpoint, access=access, profile=ctx.profile))
    ctx.refresh()
    note = (body or {}).get("profile")
    ctx.event("ready", f"{endpoint} ({access}); profile: {json.dumps(note)[:300]}")
