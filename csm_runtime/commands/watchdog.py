"""`csm-runtime watchdog`: destroy this box when it idles, or its hours or spend cap is reached (csm_runtime/watchdog.py).

Usage (listed in cli.py; `deploy provision` starts it detached beside the server):
    csm-runtime watchdog --idle-destroy-after 3600 --server http://127.0.0.1:8000 --token-file ~/csm-deploy/token
    csm-runtime watchdog --max-hours 8 --max-spend 5 --rate 0.40 --server http://127.0.0.1:8000 --token-file token

Exit status: 2 bad options; 3 not armed (no instance-scoped key, or vast refused it: one line on stderr, and the state
file says why); 0 once the box is destroyed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="csm-runtime watchdog", description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True, help="the server's URL on this box, e.g. http://127.0.0.1:8000")
    p.add_argument("--token-file", required=True, help="the server's bearer token file (for its /metrics)")
    p.add_argument(
        "--idle-destroy-after", type=float, metavar="SECONDS", help="no request (or a dead server) this long"
    )
    p.add_argument("--max-hours", type=float, help="destroy once the box ran this many hours")
    p.add_argument("--max-spend", type=float, metavar="USD", help="destroy once the box cost this much (needs --rate)")
    p.add_argument("--rate", type=float, default=0.0, metavar="USD_PER_HOUR", help="what the box costs per hour")
    p.add_argument("--started-at", type=float, metavar="UNIX", help="when the box's cost clock started [now]")
    p.add_argument("--api-url", help="vast.ai's API [VAST_URL, else https://console.vast.ai]")
    p.add_argument("--state-file", help="where the watchdog writes what it does and why (JSON)")
    p.add_argument("--cafile", help="the server's certificate, when it serves https")
    p.add_argument("--poll", type=float, default=15.0, metavar="SECONDS", help="how often the server is asked")
    return p


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    import os

    from csm_runtime.watchdog import DEFAULT_API, Limits, Refused, Settings, WatchdogError, arm, instance_key, run
    from csm_runtime.watchdog_state import State

    args = args if args is not None else build_parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        token = Path(args.token_file).expanduser().read_text().strip()
        limits = Limits(
            idle_s=args.idle_destroy_after,
            max_hours=args.max_hours,
            max_spend_usd=args.max_spend,
            rate_usd_h=args.rate,
            started_at=args.started_at or time.time(),
        )
        limits.check()
        if not 0 < args.poll <= 3600:
            raise WatchdogError(f"--poll must be between 0 and 3600 seconds, not {args.poll}")
    except (OSError, WatchdogError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    settings = Settings(
        server=args.server,
        token=token,
        limits=limits,
        api=args.api_url or os.environ.get("VAST_URL") or DEFAULT_API,
        poll_s=min(args.poll, (args.idle_destroy_after or 3600) / 4),
        state_file=Path(args.state_file) if args.state_file else None,
        cafile=args.cafile,
    )
    try:
        key = instance_key()
    except WatchdogError as exc:
        State(settings.state_file, "", {}, settings.poll_s).save(action="refused", last_error=str(exc))
        print(f"Error: not armed: {exc}", file=sys.stderr)
        return 3
    try:
        state = arm(settings, key)
    except Refused as exc:
        print(f"Error: not armed: {exc}; the box cannot destroy itself", file=sys.stderr)
        return 3
    run(settings, key, state=state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
