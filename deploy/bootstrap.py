"""Getting the runtime onto a box, and where it lives there. No I/O on import; the steps are in runtime_steps.py.

Three modes (`RuntimeOptions.mode`):
  bootstrap  the default for vast/ssh: the project wheel (built here) and the lock file (requirements/runtime.txt)
             are pushed, sha256-checked, and installed into a venv on the box. On a stock PyTorch image the venv sees
             the image's torch (`--system-site-packages`), so the pins are already met for the heaviest package.
  image      `--image REGISTRY/csm-runtime:TAG`: the image carries the runtime; nothing is installed.
  current    the default for `--provider local`: this interpreter's own environment runs the server (no venv, no
             wheel), which keeps `make demo` fast; the lock file is still copied into the box dir for the record.

A "prepared site-packages" (`--box-site-packages DIR`) is appended to the venv's path with a `.pth` file: for boxes
without network (or a shared volume that already holds the heavy dependencies), `pip install -r` then finds every
pin satisfied and downloads nothing. The line is a plain path, so `.pth` files inside DIR are not executed.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.errors import DeployError, UsageError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCK_FILE = PROJECT_ROOT / "requirements" / "runtime.txt"
STOCK_IMAGE_PREFIX = "pytorch/pytorch"  # ships torch in the system site-packages: the venv reuses it
MODES = ("auto", "bootstrap", "image", "current")
IMAGE_VENV = "/opt/venv"  # docker/Dockerfile's VIRTUAL_ENV: absolute, since an SSH session may not get the image's PATH
SERVER_NAME = "csm-runtime"  # start_detached name: the log is .csm-deploy-run/csm-runtime.log in the box's home
SERVER_LOG = f".csm-deploy-run/{SERVER_NAME}.log"
SERVER_PID = f".csm-deploy-run/{SERVER_NAME}.pid"
# Where to look for a base Python when the operator did not name one: the stock PyTorch image's conda Python first
# (it holds torch; a non-interactive SSH session may not have /opt/conda/bin on PATH), then whatever PATH offers.
PYTHON_CANDIDATES = ("/opt/conda/bin/python3", "python3")


@dataclass(frozen=True)
class RuntimeOptions:
    """What the runtime steps need, read once from ProvisionOptions.extra (the CLI fills it)."""

    model: str = "sesame/csm-1b"
    mode: str = "bootstrap"  # resolved: bootstrap | image | current
    port: int = 8000  # the server's port on the box
    bind: str = "127.0.0.1"  # loopback unless the provider mapped the port to a public one (then 0.0.0.0)
    tunnel: bool = False  # --tunnel: stay on loopback and reach the server through SSH even if a port is mapped
    box_python: str = "auto"
    box_site_packages: str | None = None
    system_site_packages: bool = False
    autotune: bool | None = None  # None: only when no profile exists for the box's device; True: always; False: never
    autotune_quick: bool = True
    autotune_args: tuple[str, ...] = ()
    profiles_dir: str = str(PROJECT_ROOT / "profiles")
    install_timeout_s: float = 1800.0
    autotune_timeout_s: float = 3600.0
    runtime_timeout_s: float = 900.0  # start -> /ready (the first start on a real box downloads the checkpoint)

    @classmethod
    def from_extra(cls, extra: dict[str, Any], *, provider: str, image: str) -> RuntimeOptions:
        model = str(extra.get("model") or cls.model)
        mode = resolve_mode(str(extra.get("runtime_mode") or "auto"), provider=provider, image=image)
        quick = extra.get("autotune_quick")
        port = extra.get("port")
        if port is None:
            port = free_local_port() if provider == "local" else cls.port
        if not 0 < int(port) < 65536:
            raise UsageError(f"--port must be between 1 and 65535, not {port}")
        values = {
            "model": model,
            "mode": mode,
            "port": int(port),
            "box_python": str(extra.get("box_python") or "auto"),
            "box_site_packages": extra.get("box_site_packages") or None,
            "system_site_packages": image.startswith(STOCK_IMAGE_PREFIX),
            "autotune": extra.get("autotune"),
            "autotune_quick": model.endswith("-random") if quick is None else bool(quick),
            "autotune_args": tuple(shlex.split(extra.get("autotune_args") or "")),
            "tunnel": bool(extra.get("tunnel")),
        }
        for name in ("profiles_dir", "install_timeout_s", "autotune_timeout_s", "runtime_timeout_s"):
            if extra.get(name) is not None:
                values[name] = extra[name]
        return cls(**values)


def resolve_mode(mode: str, *, provider: str, image: str) -> str:
    """auto: `current` on this machine, `image` when the image is a csm-runtime image, else `bootstrap`."""
    if mode not in MODES:
        raise UsageError(f"unknown runtime mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode != "auto":
        if mode == "current" and provider != "local":
            raise UsageError("--runtime-mode current only makes sense with --provider local")
        return mode
    if provider == "local":
        return "current"
    return "image" if is_runtime_image(image) else "bootstrap"


def is_runtime_image(image: str) -> bool:
    """`ghcr.io/me/csm-runtime:1.2` -> True: the repository name (last path part, before the tag) is csm-runtime."""
    name = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    return name == "csm-runtime"


def free_local_port() -> int:
    from deploy.remote import free_port

    return free_port()


@dataclass(frozen=True)
class BoxLayout:
    """Paths on the box. `dir` is relative to the box's home (both hosts run commands there) unless absolute."""

    dir: str
    mode: str
    current_bin: str = str(Path(sys.executable).parent)  # mode `current`: this interpreter's scripts dir

    @classmethod
    def for_remote_dir(cls, remote_dir: str, mode: str) -> BoxLayout:
        d = remote_dir[2:] if remote_dir.startswith("~/") else remote_dir
        return cls(d.rstrip("/") or ".", mode)

    def path(self, name: str) -> str:
        return f"{self.dir}/{name}"

    @property
    def venv(self) -> str:
        return self.path("venv")

    @property
    def lock(self) -> str:
        return self.path("runtime.txt")

    @property
    def token(self) -> str:
        return self.path("token")

    @property
    def profiles(self) -> str:
        return self.path("profiles")

    @property
    def python(self) -> str:
        return {"bootstrap": f"{self.venv}/bin/python", "image": f"{IMAGE_VENV}/bin/python", "current": sys.executable}[
            self.mode
        ]

    @property
    def runtime_bin(self) -> str:
        return {
            "bootstrap": f"{self.venv}/bin/csm-runtime",
            "image": f"{IMAGE_VENV}/bin/csm-runtime",
            "current": str(Path(self.current_bin) / "csm-runtime"),
        }[self.mode]


def build_wheel(out_dir: Path, *, root: Path = PROJECT_ROOT, python: str = sys.executable) -> Path:
    """The project wheel, built from a clean copy of the sources (setuptools' build/ dir keeps deleted modules)."""
    if not (root / "pyproject.toml").is_file():
        raise DeployError(
            f"bootstrap mode builds the project wheel from its source checkout, and {root} has no pyproject.toml; "
            "run from a clone, or rent with a prebuilt image: --image REGISTRY/csm-runtime:TAG"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="csm-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            if (root / name).exists():
                shutil.copy2(root / name, src / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for package in ("deploy", "csm_runtime", "csm_common"):
            shutil.copytree(root / package, src / package, ignore=ignore)
        cmd = [python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check"]
        res = subprocess.run([*cmd, "-q", "-w", str(out_dir), str(src)], capture_output=True, text=True)
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DeployError(f"building the project wheel failed: {tail[0]}")
    wheels = sorted(out_dir.glob("csm_deploy-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise DeployError(f"pip wheel succeeded but left no csm_deploy wheel in {out_dir}")
    return wheels[-1]


def base_python_snippet(box_python: str) -> str:
    """Shell that sets $PY to the base interpreter, or fails with one line naming what it tried."""
    if box_python != "auto":
        q = shlex.quote(box_python)
        return f'PY={q}; command -v "$PY" >/dev/null || {{ echo "base python {q} not found on the box" >&2; exit 3; }}'
    tries = " ".join(PYTHON_CANDIDATES)
    return (
        f'PY=""; for p in {tries}; do if command -v "$p" >/dev/null; then PY="$p"; break; fi; done; '
        f'[ -n "$PY" ] || {{ echo "no python3 on the box (tried {tries}); pass --box-python PATH" >&2; exit 3; }}'
    )


def install_script(layout: BoxLayout, opts: RuntimeOptions, wheel_name: str) -> str:
    """One shell script, run in the box's home: venv (reused when present), optional .pth, pins, the wheel."""
    q = shlex.quote
    venv, pip = q(layout.venv), f"{q(layout.venv)}/bin/python -m pip --disable-pip-version-check --no-input"
    lines = ["set -e", base_python_snippet(opts.box_python)]
    flags = "--system-site-packages " if opts.system_site_packages else ""
    lines.append(f'[ -x {venv}/bin/python ] || "$PY" -m venv {flags}--without-pip {venv}')
    if opts.box_site_packages:
        site = q(opts.box_site_packages)
        lines.append(f'[ -d {site} ] || {{ echo "prepared site-packages {site} does not exist" >&2; exit 3; }}')
        purelib = f"$({venv}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')"
        lines.append(f'echo {site} > "{purelib}/csm-deploy-prepared.pth"')
    # pip itself: from the image / prepared dir when they have it (no download), else the venv's own bundled copy
    lines.append(f"{venv}/bin/python -m pip --version >/dev/null 2>&1 || {venv}/bin/python -m ensurepip -q --upgrade")
    lines.append(f"{pip} install -q -r {q(layout.lock)}")
    lines.append(f"{pip} install -q --no-deps --force-reinstall {q(layout.path('wheels/' + wheel_name))}")
    lines.append(f"{q(layout.runtime_bin)} --help >/dev/null")
    lines.append(f'echo "installed {wheel_name} into $(cd {venv} && pwd) (base $("$PY" -V 2>&1))"')
    return "\n".join(lines)


def device_probe_command(layout: BoxLayout) -> str:
    """Prints the box's device facts as JSON: the same detection `serve --profile auto` uses to pick a profile."""
    code = (
        "import dataclasses, json; from csm_runtime.identity import detect_device; "
        "print(json.dumps(dataclasses.asdict(detect_device())))"
    )
    return f"{shlex.quote(layout.python)} -c {shlex.quote(code)}"


def model_family(model_id: str) -> str:
    """Mirror of csm_runtime.profile.model_family (deploy may not import csm_runtime): profiles transfer between
    models of one shape, so a tiny-random profile must not be pushed for CSM-1B and the other way round."""
    return "tiny" if model_id == "tiny-random" else "csm-1b"
