"""`csm-runtime`: the data plane's command line. This file is its table of contents.

    csm-runtime serve      the OpenAI-compatible speech server        serve_cmd.py
    csm-runtime autotune   sweep settings, write profiles/<slug>.yaml autotune_cmd.py
    csm-runtime generate   one text to a WAV, with frame metrics       generate_cmd.py
    csm-runtime info       torch / CUDA / GPU / CPU / RAM of this box  info.py

Each module owns its options (`build_parser(parser)`) and its `main(args=...)`; nothing heavy is imported here.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

# subcommand -> module that defines build_parser(parser) and main(argv=None, args=None) -> int
COMMANDS: dict[str, str] = {
    "serve": "csm_runtime.serve_cmd",
    "autotune": "csm_runtime.autotune_cmd",
    "generate": "csm_runtime.generate_cmd",
    "info": "csm_runtime.info",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csm-runtime", description="CSM speech runtime: serve and autotune.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        mod = import_module(module)
        doc = (mod.__doc__ or "").strip().splitlines()[0]
        mod.build_parser(sub.add_parser(name, help=doc, description=doc))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return import_module(COMMANDS[args.command]).main(args=args)


if __name__ == "__main__":
    sys.exit(main())
