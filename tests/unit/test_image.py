"""The image installs exactly the runtime pins CI installs, on the CUDA version torch was built for.

No Docker engine runs here, so the image itself is not built in tests; hadolint lints it in `make lint`, and these
checks read the Dockerfile the way `docker build` would.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
RUNTIME_PINS = ROOT / "requirements" / "runtime.txt"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned with =="
            pins[name.lower()] = version
    return pins


def _run_lines(text: str) -> list[str]:
    """RUN instructions with their continuation lines joined."""
    joined = text.replace("\\\n", " ")
    return [line.strip()[4:] for line in joined.splitlines() if line.strip().startswith("RUN ")]


def test_image_installs_the_runtime_pins_file_and_nothing_else_pinned():
    text = DOCKERFILE.read_text()
    assert "COPY requirements/runtime.txt requirements/runtime.txt" in text
    pip_lines = [r for r in _run_lines(text) if "pip install" in r]
    assert any("-r requirements/runtime.txt" in r for r in pip_lines)
    for line in pip_lines:
        # Any other package install would bypass the one pin file CI uses.
        assert line.strip() in ("pip install -r requirements/runtime.txt", "pip install --no-deps ."), line


def test_runtime_pins_are_exact_and_match_the_cuda_base():
    pins = _pins(RUNTIME_PINS)
    for name in ("torch", "torchaudio", "transformers", "moshi", "fastapi", "uvicorn"):
        assert name in pins, f"{name} missing from requirements/runtime.txt"
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-", DOCKERFILE.read_text(), re.MULTILINE)
    assert base, "the image must start FROM an nvidia/cuda base"
    assert (base.group(1), base.group(2)) == ("12", "4")
    # torch 2.6.0 on PyPI is the +cu124 build: the same wheel CI installs runs in the CUDA 12.4 image.
    assert pins["torch"] == "2.6.0" and pins["torchaudio"] == "2.6.0"


def test_ci_venv_has_the_runtime_pins():
    from importlib.metadata import version

    for name, pinned in _pins(RUNTIME_PINS).items():
        installed = version(name).split("+")[0]
        assert installed == pinned, f"{name}: installed {installed}, pinned {pinned}"


@pytest.mark.skipif(shutil.which("hadolint") is None and not (ROOT / ".venv/bin/hadolint").exists(), reason="hadolint")
def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint") or str(ROOT / ".venv/bin/hadolint")
    result = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
