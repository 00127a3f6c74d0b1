"""Autotune on a box, one implementation for the provision step and `deploy autotune`: run `csm-runtime autotune`
there with its progress streamed here, then copy the profile YAML (and PNG) back, sha256-checked, and check it.

The control plane never imports csm_runtime, so the profile is checked here only as far as the file contract goes
(csm_common/profiles.py: YAML, the schema version, the slug matching the file name); the runtime validates it fully
when it loads it. A profile measured before for this device and model family is found with `find_local_profile`.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from csm_common.profiles import SCHEMA_VERSION, model_family, profile_filename
from deploy.errors import RemoteError
from deploy.remote.host import CommandResult, Host


@dataclass(frozen=True)
class AutotuneResult:
    slug: str
    profile: Path  # local copy
    plot: Path | None
    summary: dict[str, Any]  # what the box printed (--json): chosen settings, why, counts, + sha256
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.summary.items() if k not in ("profile", "plot")}
        data.update(slug=self.slug, profile=str(self.profile), duration_s=round(self.duration_s, 1))
        data["plot"] = str(self.plot) if self.plot else None
        return data


def autotune_command(
    *, runtime: str, workdir: str, model: str, quick: bool, plot: bool = True, extra: Sequence[str] = ()
) -> str:
    """`cd WORKDIR && csm-runtime autotune ... --out profiles --json`: the profile lands in WORKDIR/profiles."""
    args = [runtime, "autotune", "--model", model, "--out", "profiles", "--json"]
    args += ["--quick"] if quick else []
    args += [] if plot else ["--no-plot"]
    q = shlex.quote(workdir)
    return f"mkdir -p {q} && cd {q} && " + " ".join(shlex.quote(a) for a in [*args, *extra])


def last_json_line(result: CommandResult) -> dict[str, Any]:
    for line in reversed(result.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    raise RemoteError(f"autotune printed no JSON summary (last output: {result.stdout.strip()[-200:]!r})")


def check_profile_file(path: Path, slug: str) -> dict[str, Any]:
    """The file contract the control plane can check without the runtime: YAML, the schema, slug = file name."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise RemoteError(f"{path}: the box returned a profile that is not valid YAML") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise RemoteError(f"{path}: not a schema-{SCHEMA_VERSION} profile")
    if data.get("slug") != slug or path.name != profile_filename(slug):
        raise RemoteError(f"{path}: slug {data.get('slug')!r} does not match the file name")
    return data


def run_autotune(
    host: Host,
    *,
    runtime: str,
    workdir: str,
    model: str,
    quick: bool,
    out_dir: Path,
    plot: bool = True,
    extra: Sequence[str] = (),
    timeout: float | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> AutotuneResult:
    """Sweep on `host` (progress lines stream to the host's output sink), then copy the YAML (+ PNG) into `out_dir`.
    `workdir` is relative to the box's login directory (`~/` is accepted)."""
    workdir = workdir[2:] if workdir.startswith("~/") else workdir
    command = autotune_command(runtime=runtime, workdir=workdir, model=model, quick=quick, plot=plot, extra=extra)
    log(f"autotune on {host.name}: {command}")
    result = host.run(command, timeout=timeout, stream=True, check=False)
    if not result.ok:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        # the runtime's own one-line reason (`Error: ...`), e.g. a gated checkpoint without access
        raise RemoteError(f"autotune on the box exited {result.exit_code}: {tail[0].removeprefix('Error: ')}")
    summary = last_json_line(result)
    slug = str(summary.get("slug") or "")
    if not slug or "/" in slug or slug.startswith("."):
        raise RemoteError(f"autotune reported an unusable slug {slug!r}")
    profile = out_dir / profile_filename(slug)
    summary["sha256"] = host.get(posixpath.join(workdir, summary["profile"]), profile)
    check_profile_file(profile, slug)
    plot_path = None
    if summary.get("plot"):
        plot_path = out_dir / f"{slug}.png"
        host.get(posixpath.join(workdir, summary["plot"]), plot_path)
    log(f"profile {profile} ({summary['sha256'][:12]}) copied back")
    return AutotuneResult(slug, profile, plot_path, summary, result.duration_s)


def find_local_profile(directories: Sequence[Path], slug: str, model: str) -> Path | None:
    """A usable profile for this device slug and model family, from the first directory that has one."""
    for directory in directories:
        path = directory / profile_filename(slug)
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
            measured = data["identity"]["model"]["id"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue  # not a usable profile: the runtime would refuse it too
        if data.get("schema_version") == SCHEMA_VERSION and model_family(measured) == model_family(model):
            return path
    return None


def profile_summary(text: str, source: str, path: str) -> dict[str, Any]:
    """What the ready printout and the ledger keep of a profile: the chosen setting and its speed - the profile's
    figures (what the box's server delivered over HTTP), or the sweep's measurement in files that predate them."""
    data = yaml.safe_load(text) or {}
    chosen = data.get("chosen") or {}
    figures = chosen.get("figures") or {}
    measurement = chosen.get("measurement") or {}
    settings = chosen.get("settings") or {}
    return {
        "source": source,
        "path": path,
        "slug": data.get("slug"),
        "candidate": chosen.get("candidate"),
        "rtf": figures.get("rtf", measurement.get("rtf")),
        "rtf_from": figures.get("source", "sweep"),  # delivered | sweep
        "max_streams": settings.get("max_streams"),
        "realtime": chosen.get("realtime"),
        "measured_on": ((data.get("identity") or {}).get("device") or {}).get("name"),
    }
