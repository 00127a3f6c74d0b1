"""`csm-runtime`: the data plane's command line. This file is its table of contents.

    csm-runtime serve      the OpenAI-compatible speech server         commands/serve.py
    csm-runtime autotune   sweep settings, write profiles/<slug>.yaml  commands/autotune.py
    csm-runtime generate   one text to a WAV, with frame metrics       commands/generate.py
    csm-runtime info       torch / CUDA / GPU / CPU / RAM of this box  commands/info.py
    csm-runtime watchdog   destroy this box when idle or over its cap  commands/watchdog.py

Each command module owns its options (`build_parser(parser)`) and its `main(args=...)`. At import they load only the
standard library and the settings; torch, the engine and the server load inside the command that runs them, so
`csm-runtime --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from csm_runtime.commands import autotune, generate, info, serve, watchdog

COMMANDS = {"serve": serve, "autotune": autotune, "generate": generate, "info": info, "watchdog": watchdog}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csm-runtime", description="CSM speech runtime: serve and autotune.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        doc = (module.__doc__ or "").strip().splitlines()[0]
        module.build_parser(sub.add_parser(name, help=doc, description=doc))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command].main(args=args)


if __name__ == "__main__":
    sys.exit(main())
