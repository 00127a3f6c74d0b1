"""Autotune on a box: run `csm-runtime autotune` there with its progress streamed here, copy the profile YAML and
PNG back into the local `profiles/`, and record the result in the ledger.

The control plane never imports csm_runtime, so the profile is checked here only as far as the file contract goes
(YAML, `schema_version: 1`, the slug matching the file name); the runtime validates it fully when it loads it.
`run_autotune` takes any `Host` (SSH or this machine), so a provision step can call it as well as the command.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deploy.errors import RemoteError
from deploy.remote import CommandResult, Host, LocalHost, sha256_file

PROFILE_SCHEMA_VERSION = 1
DEFAULT_RUNTIME = "csm-runtime"


@dataclass(frozen=True)
class AutotuneResult:
    slug: str
    profile: Path  # local copy
    plot: Path | None
    summary: dict[str, Any]  # what the box printed (--json): chosen settings, why, counts
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"slug": self.slug, "profile": str(self.profile), "plot": str(self.plot) if self.plot else None,
                "duration_s": round(self.duration_s, 1), **{k: v for k, v in self.summary.items()
                                                            if k not in ("profile", "plot")}}  # fmt: skip


def box_path(path: str) -> str:
    """A path relative to the box's working directory (SSH home, or LocalHost's root): `~/x` -> `x`.

    Commands on a LocalHost run in its root, where a literal `~` would be the operator's real home."""
    return path[2:] if path.startswith("~/") else path


def autotune_command(*, runtime: str, workdir: str, model: str, quick: bool, extra: str = "") -> str:
    parts = [f"{runtime} autotune", "--model", shlex.quote(model), "--out", "profiles", "--json"]
    if quick:
        parts.append("--quick")
    if extra:
        parts.append(" ".join(shlex.quote(a) for a in shlex.split(extra)))
    return f"mkdir -p {shlex.quote(workdir)} && cd {shlex.quote(workdir)} && " + " ".join(parts)


def last_json_line(result: CommandResult) -> dict[str, Any]:
    for line in reversed(result.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    raise RemoteError(f"autotune printed no JSON summary (last output: {result.stdout.strip()[-200:]!r})")


def fetch_file(host: Host, remote: str, local: Path) -> str:
    """Copy one file from the box (binary-safe), checking its sha256 against the box's own.

    deploy/remote.py has `put` but no `get` yet; this is the smallest one: Fabric's SFTP get over SSH, a copy here."""
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(local.name + ".part")
    if isinstance(host, LocalHost):
        shutil.copyfile(host.path(remote), tmp)
    else:
        host.conn.get(remote, str(tmp))  # type: ignore[attr-defined]
    theirs = host.run(f"sha256sum {shlex.quote(remote)}", stream=False).stdout.split()[:1]
    mine = sha256_file(tmp)
    if theirs != [mine]:
        tmp.unlink(missing_ok=True)
        raise RemoteError(f"{host.name}: checksum mismatch copying {remote} back")
    tmp.replace(local)
    return mine


def check_profile_file(path: Path, slug: str) -> dict[str, Any]:
    """The file contract the control plane can check without the runtime: YAML, schema 1, slug = file name."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise RemoteError(f"{path}: the box returned a profile that is not valid YAML") from None
    if not isinstance(data, dict) or data.get("schema_version") != PROFILE_SCHEMA_VERSION:
        raise RemoteError(f"{path}: not a schema-{PROFILE_SCHEMA_VERSION} profile")
    if data.get("slug") != slug or path.stem != slug:
        raise RemoteError(f"{path}: slug {data.get('slug')!r} does not match the file name")
    return data


def run_autotune(
    host: Host,
    *,
    model: str,
    quick: bool,
    out_dir: Path,
    workdir: str = "csm-deploy",
    runtime: str = DEFAULT_RUNTIME,
    extra: str = "",
    timeout: float | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> AutotuneResult:
    """Sweep on `host` (progress lines stream to the host's output sink), then copy the YAML + PNG into `out_dir`."""
    workdir = box_path(workdir)
    command = autotune_command(runtime=runtime, workdir=workdir, model=model, quick=quick, extra=extra)
    log(f"autotune on {host.name}: {command}")
    result = host.run(command, timeout=timeout, stream=True)
    summary = last_json_line(result)
    slug = str(summary.get("slug") or "")
    if not slug or "/" in slug or slug.startswith("."):
        raise RemoteError(f"autotune reported an unusable slug {slug!r}")
    profile = out_dir / f"{slug}.yaml"
    digest = fetch_file(host, posixpath.join(workdir, summary["profile"]), profile)
    check_profile_file(profile, slug)
    plot = None
    if summary.get("plot"):
        plot = out_dir / f"{slug}.png"
        fetch_file(host, posixpath.join(workdir, summary["plot"]), plot)
    summary["sha256"] = digest
    log(f"profile {profile} ({hashlib.sha256(profile.read_bytes()).hexdigest()[:12]}) copied back")
    return AutotuneResult(slug, profile, plot, summary, result.duration_s)
