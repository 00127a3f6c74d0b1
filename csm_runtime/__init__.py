"""csm-deploy data plane: CSM-1B streaming generation and its HTTP server. Runs on the rented box.

    engine/      the model, Mimi, the frame step and StreamingGenerator
    tuning/      autotune: device identity, the sweep, the choice rule, the profile
    server/      the FastAPI app and the scheduler thread that owns the generator
    commands/    the `csm-runtime` subcommands (cli.py is their table of contents)
    settings.py  every knob: defaults <- YAML <- CSM_* environment <- options
    voices/      the packaged voice table

The Python API is importable from here:

    from csm_runtime import GenerationParams, load_generator

    gen = load_generator("tiny-random", max_streams=4)
    for chunk in gen.stream("Hello there.", speaker=0, params=GenerationParams(max_audio_ms=4000)):
        ...
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public name -> its module. Imported on first use, so `import csm_runtime` (and `csm-runtime --help`) loads no torch.
_EXPORTS = {
    "load_generator": "csm_runtime.engine.loader",
    "GeneratorFactory": "csm_runtime.engine.loader",
    "StreamingGenerator": "csm_runtime.engine.generator",
    "BatchFullError": "csm_runtime.engine.generator",
    "Segment": "csm_runtime.engine.types",
    "GenerationParams": "csm_runtime.engine.types",
    "AudioChunk": "csm_runtime.engine.types",
    "ChunkMetrics": "csm_runtime.engine.types",
    "StreamEvent": "csm_runtime.engine.types",
    "RuntimeSettings": "csm_runtime.settings",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'csm_runtime' has no attribute {name!r}")
