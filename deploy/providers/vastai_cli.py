"""The only module that runs the `vastai` CLI. It returns typed records and raises `VastError` with the CLI's words.

The CLI lives in its own virtual environment (its pins clash with moshi's), so it is a subprocess, always `--raw`.
Its quirks, handled here once: it exits 0 on HTTP errors and prints `{"error": true, ...}` on stderr; a listing it
cannot parse must never read as "no instances"; `destroy` without `-y` silently aborts. The API key is never put on
its command line (it reads VAST_API_KEY or its own key file), so it cannot leak through `ps` or our logs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from deploy.errors import DeployError
from deploy.providers.records import Box, Offer, State

# vast's `actual_status` -> our three states; anything unseen counts as still pending.
STATUS_TABLE: dict[str, State] = {
    "running": State.RUNNING,
    "created": State.PENDING,
    "loading": State.PENDING,
    "scheduling": State.PENDING,
    "rebooting": State.PENDING,
    "stopped": State.STOPPED,
    "exited": State.STOPPED,
    "offline": State.FAILED,
    "frozen": State.FAILED,
    "error": State.FAILED,
}


def map_status(raw: str | None) -> State:
    return STATUS_TABLE.get((raw or "").lower(), State.PENDING)


class VastError(DeployError):
    """The vastai CLI reported an error, or said something we cannot parse. `status_code` is the HTTP status."""

    def __init__(self, message: str, *, status_code: int | None = None, command: str = ""):
        self.status_code = status_code
        self.command = command
        prefix = f"vastai {command}: " if command else "vastai: "
        super().__init__(prefix + message)


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
    """Thin, typed calls over `vastai ... --raw`. One instance per command run; cheap to make."""

    def __init__(self, binary: str | None = None, *, timeout_s: float = 120.0):
        self.binary = binary or find_vastai()
        self.timeout_s = timeout_s
        self.calls: list[tuple[str, float]] = []  # (command, seconds): what bench/ reads

    def run(self, *args: str, expect_output: bool = True) -> Any:
        """Run one command; return its parsed JSON (None when `expect_output` is False and it printed nothing)."""
        command = " ".join(args[:2])
        env = dict(os.environ, VASTAI_NO_UPDATE_CHECK="1")
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [self.binary, *args, "--raw"],
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=self.timeout_s,
                env=env,
            )
        except subprocess.TimeoutExpired:
            raise VastError(f"no answer within {self.timeout_s:.0f} s", command=command) from None
        except OSError as exc:
            raise VastError(f"cannot run {self.binary}: {exc.strerror}", command=command) from None
        finally:
            self.calls.append((command, time.monotonic() - started))
        err = _error_from_stderr(proc.stderr)
        if err is not None:
            code = err.get("status_code") or None
            msg = str(err.get("msg") or err.get("error"))
            if code == 401:
                msg = f"vast.ai rejected the API key (HTTP 401: {msg}); set VAST_API_KEY or run `vastai set api-key`"
            elif code:
                msg = f"HTTP {code}: {msg}"
            else:
                msg = f"unreadable answer from vast.ai ({msg})"
            raise VastError(msg, status_code=code, command=command)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["(no message)"]
            raise VastError(f"exit {proc.returncode}: {_short(lines[-1])}", command=command)
        out = proc.stdout.strip()
        if not out:
            if expect_output:
                raise VastError("printed nothing where JSON was expected", command=command)
            return None
        try:
            return json.loads(out)
        except ValueError:
            raise VastError(f"unparseable output: {_short(out)}", command=command) from None

    # --- offers -------------------------------------------------------------------------------------------------
    def search_offers(
        self,
        vast_gpu_name: str,
        *,
        max_price: float | None = None,
        min_reliability: float | None = None,
        min_cuda: float | None = None,
        disk_gb: float | None = None,
        limit: int = 20,
    ) -> list[Offer]:
        query = [f"gpu_name={vast_gpu_name.replace(' ', '_')}", "num_gpus=1", "rentable=true"]
        if min_reliability is not None:
            query.append(f"reliability>={min_reliability}")
        if min_cuda is not None:
            query.append(f"cuda_vers>={min_cuda}")
        if disk_gb is not None:
            query.append(f"disk_space>={disk_gb}")
        if max_price is not None:
            query.append(f"dph<={max_price}")
        args = ["search", "offers", " ".join(query), "-o", "dph", "--limit", str(limit)]
        if disk_gb is not None:
            args += ["--storage", str(disk_gb)]
        rows = self.run(*args)
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "id" in r for r in rows):
            raise VastError(f"malformed offer list: {_short(json.dumps(rows))}", command="search offers")
        offers = [_offer(r) for r in rows]
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
    ) -> str:
        """`ports`: box ports to map to public ones, as docker's `-p P:P` in the create's env field (the CLI parses
        `--env` into `{"-p P:P": "1"}`); vast picks the public port and reports it in the instance's `ports`."""
        args = [
            "create",
            "instance",
            str(offer_id),
            "--image",
            image,
            "--disk",
            str(disk_gb),
            "--label",
            label,
            "--ssh",
        ]
        if onstart:
            args += ["--onstart-cmd", onstart]
        if ports:
            args += ["--env", " ".join(f"-p {int(p)}:{int(p)}" for p in ports)]
        res = self.run(*args)
        if not isinstance(res, dict) or not res.get("success") or not res.get("new_contract"):
            raise VastError(
                f"create did not return an instance id: {_short(json.dumps(res))}", command="create instance"
            )
        return str(res["new_contract"])

    def attach_ssh(self, instance_id: str, public_key: str) -> None:
        # `attach ssh` ignores --raw on success (prints a Python dict); errors still come as JSON on stderr.
        key = public_key.strip()
        if not key.startswith("ssh-"):
            raise VastError("refusing to attach something that is not an SSH public key", command="attach ssh")
        try:
            self.run("attach", "ssh", str(instance_id), key, expect_output=False)
        except VastError as exc:
            if "unparseable output" not in str(exc):
                raise

    def show_instances(self) -> list[Box]:
        rows = self.run("show", "instances")
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "id" in r for r in rows):
            raise VastError(f"malformed instance listing: {_short(json.dumps(rows))}", command="show instances")
        return [_box(r) for r in rows]

    def show_instance(self, instance_id: str) -> Box | None:
        res = self.run("show", "instance", str(instance_id))
        if isinstance(res, dict) and "instances" in res and res["instances"] is None:
            return None
        if not isinstance(res, dict) or "id" not in res:
            raise VastError(f"malformed instance record: {_short(json.dumps(res))}", command="show instance")
        return _box(res)

    def destroy_instance(self, instance_id: str) -> None:
        # `-y` matters: without it the CLI reads stdin, prints "Aborted." and exits 0 having done nothing.
        self.run("destroy", "instance", str(instance_id), "-y", expect_output=False)

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


def _num(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _offer(r: dict[str, Any]) -> Offer:
    return Offer(
        provider="vast",
        id=str(r["id"]),
        gpu_name=str(r.get("gpu_name") or ""),
        num_gpus=int(r.get("num_gpus") or 1),
        price_usd_h=_num(r.get("dph_total")) or 0.0,
        reliability=_num(r.get("reliability2", r.get("reliability"))),
        cuda=_num(r.get("cuda_max_good")),
        disk_gb=_num(r.get("disk_space")),
        gpu_ram_gb=(_num(r.get("gpu_ram")) or 0) / 1024 or None,
        location=str(r.get("geolocation") or ""),
        host_id=str(r.get("host_id") or r.get("machine_id") or ""),
        extra={"machine_id": r.get("machine_id")},
    )


def _ports(raw: Any) -> dict[int, int]:
    """vast's docker-style `{"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41234"}]}` -> {8000: 41234} (tcp only)."""
    mapped: dict[int, int] = {}
    if not isinstance(raw, dict):
        return mapped
    for key, bindings in raw.items():
        inner, _, proto = str(key).partition("/")
        if proto not in ("", "tcp") or not inner.isdigit() or not isinstance(bindings, list):
            continue
        for b in bindings:
            host_port = str((b or {}).get("HostPort") or "") if isinstance(b, dict) else ""
            if host_port.isdigit():
                mapped[int(inner)] = int(host_port)
                break
    return mapped


def _box(r: dict[str, Any]) -> Box:
    raw = r.get("actual_status") or r.get("cur_state") or ""
    port = r.get("ssh_port")
    return Box(
        provider="vast",
        id=str(r["id"]),
        state=map_status(raw),
        raw_status=str(raw),
        label=r.get("label"),
        ssh_host=r.get("ssh_host"),
        ssh_port=int(port) if port else None,
        price_usd_h=_num(r.get("dph_total")),
        gpu_name=str(r.get("gpu_name") or ""),
        started_at=_num(r.get("start_date")),
        detail=str(r.get("status_msg") or ""),
        public_ip=str(r.get("public_ipaddr") or "").strip() or None,
        ports=_ports(r.get("ports")),
    )


def charges_by_instance(rows: list[dict[str, Any]]) -> dict[str, float]:
    """vast charge rows (`source` = "instance-<id>") summed per instance id."""
    out: dict[str, float] = defaultdict(float)
    for row in rows:
        source = str(row.get("source") or "")
        if source.startswith("instance-"):
            try:
                out[source.split("-", 1)[1]] += float(row.get("amount") or 0.0)
            except ValueError:
                continue
    return dict(out)
