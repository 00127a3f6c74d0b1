"""The csm_runtime package: its public names import from the root, and neither `import csm_runtime` nor
`csm-runtime --help` loads the heavy stack (torch, transformers, moshi, the server)."""

from __future__ import annotations

import subprocess
import sys

import csm_runtime
from csm_runtime.engine import generator, loader, types
from tests.conftest import ROOT

HEAVY = ("torch", "transformers", "moshi", "fastapi", "uvicorn", "pydantic", "matplotlib")


def test_public_names_import_from_the_package_root():
    from csm_runtime import BatchFullError, GenerationParams, Segment, load_generator

    assert load_generator is loader.load_generator and BatchFullError is generator.BatchFullError
    assert (GenerationParams, Segment) == (types.GenerationParams, types.Segment)
    assert set(csm_runtime.__all__) >= {"load_generator", "StreamingGenerator", "RuntimeSettings", "__version__"}


def test_help_loads_nothing_heavy():
    code = (
        "import sys\nfrom csm_runtime.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "HEAVY []" in out and "autotune" in out and "generate" in out
