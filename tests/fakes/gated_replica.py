"""A real csm-runtime app (tiny-random) whose model load waits until a gate file exists: a replica that stays
"warming" (/ready 503) for exactly as long as a test wants. Run as a process: python -m tests.fakes.gated_replica PORT
TOKEN_FILE GATE_FILE."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import uvicorn

from csm_runtime.server.app import create_app
from csm_runtime.settings import RuntimeSettings


def main(port: int, token_file: str, gate: str) -> None:
    settings = RuntimeSettings(model="tiny-random", device="cpu", dtype="float32", token_file=token_file,
                               max_streams=4, cpu_threads=1, port=port)  # fmt: skip

    def loader():
        while not Path(gate).exists():
            time.sleep(0.05)
        from csm_runtime.engine.loader import load_generator

        return load_generator("tiny-random", settings=settings)

    uvicorn.run(create_app(settings, loader=loader), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
