"""Where the runtime lives on a box, and how it gets there: paths, the wheel, the install script, the device probe.
No I/O on import; the steps that use it are in runtime_steps.py.

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
from typing import TYPE_CHECKING

from deploy.errors import DeployError

if TYPE_CHECKING:
    from deploy.provision.options import RuntimeOptions

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOCK_FILE = PROJECT_ROOT / "requirements" / "runtime.txt"
PROFILES_DIR = PROJECT_ROOT / "profiles"  # profiles measured before: pushed instead of autotuning again
PACKAGES = ("deploy", "csm_runtime", "csm_common")  # what the wheel pushed to a box holds
IMAGE_VENV = "/opt/venv"  # docker/Dockerfile's VIRTUAL_ENV: absolute, since an SSH session may not get the image's PATH
SERVER_NAME = "csm-runtime"  # start_detached name: the log is .csm-deploy-run/csm-runtime.log in the box's home
SERVER_LOG = f".csm-deploy-run/{SERVER_NAME}.log"
SERVER_PID = f".csm-deploy-run/{SERVER_NAME}.pid"
# Where to look for a base Python when the operator did not name one: the stock PyTorch image's conda Python first
# (it holds torch; a non-interactive SSH session may not have /opt/conda/bin on PATH), then whatever PATH offers.
PYTHON_CANDIDATES = ("/opt/conda/bin/python3", "python3")


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
        for package in PACKAGES:
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
        "import dataclasses, json; from csm_runtime.tuning.identity import detect_device; "
        "print(json.dumps(dataclasses.asdict(detect_device())))"
    )
    return f"{shlex.quote(layout.python)} -c {shlex.quote(code)}"


def runtime_torch() -> str | None:
    """The torch version the runtime's lock pins (requirements/runtime.txt), None without a source checkout."""
    try:
        lines = LOCK_FILE.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, version = line.split("#", 1)[0].strip().partition("==")
        if name.strip().lower() == "torch" and version:
            return version.strip()
    return None
