"""`csm-runtime serve`: settings -> profile -> app -> uvicorn, after refusing unsafe binds.

Usage (listed in cli.py):
    csm-runtime serve --model tiny-random --port 8000
    csm-runtime serve --model sesame/csm-1b --host 0.0.0.0 --token-file /run/secrets/token --profile auto
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
from typing import Any

from csm_runtime.settings import RuntimeSettings, SettingsError, apply_overrides, load_settings

log = logging.getLogger("csm_runtime.serve")


class ServeError(Exception):
    """A reason not to start, fit for one line on stderr."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: RuntimeSettings) -> None:
    """Anything reachable from outside this machine must be behind a token."""
    if not settings.token_file and not is_loopback(settings.host):
        raise ServeError(
            f"refusing to bind {settings.host}:{settings.port} without a token: anyone who can reach it could use the "
            "GPU. Pass --token-file FILE (or CSM_TOKEN_FILE), or bind 127.0.0.1 and tunnel."
        )


def resolve_profile(settings: RuntimeSettings, cli: dict[str, Any]) -> tuple[RuntimeSettings, Any]:
    """THE call site for `--profile auto|off|PATH`: returns (settings with the profile applied, what /ready reports).

    Which profile applies and what it sets is csm_runtime/tuning/apply.py. Explicit command-line values win over the
    profile.
    """
    if settings.profile == "off":
        return settings, None
    # The profile schema (pydantic) loads only when a profile is read, so `csm-runtime --help` stays fast.
    from csm_runtime.tuning.apply import profile_overrides

    overrides, description = profile_overrides(settings)
    settings = apply_overrides(settings, overrides or {}, f"profile {description or settings.profile}")
    return apply_overrides(settings, cli, "command line"), description


def serve(settings: RuntimeSettings, cli: dict[str, Any] | None = None, log_level: str = "info") -> int:
    """Run the server until SIGINT/SIGTERM; returns the exit code. `cli` = the explicitly given options."""
    # uvicorn and FastAPI load only to serve: `csm-runtime --help` and `serve --show-config` stay fast.
    import uvicorn

    from csm_runtime.server import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    try:
        check_bind(settings)
        settings, profile = resolve_profile(settings, cli)
        app = create_app(settings, profile=profile)
    except (ServeError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    auth = "bearer token required" if settings.token_file else "no token (loopback only)"
    log.info("serving %s on http://%s:%d (%s)", settings.model, settings.host, settings.port, auth)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


def build_parser(parser=None):
    """The `serve` options (argparse); cli.py registers this as its `serve` subcommand."""
    p = parser or argparse.ArgumentParser(prog="csm-runtime serve", description="Serve CSM as an OpenAI speech API.")
    p.add_argument("--model", help="tiny-random | csm-1b-random | sesame/csm-1b | a local path")
    p.add_argument("--host", help="bind address (default 127.0.0.1; anything else needs --token-file)")
    p.add_argument("--port", type=int)
    p.add_argument("--token-file", help="file holding the bearer token every route but /health requires")
    p.add_argument("--profile", help="auto | off | PATH of a profile YAML")
    p.add_argument("--voices-dir", help="directory of extra voice YAML files")
    p.add_argument("--max-streams", type=int, help="streams decoded together (default: the profile's)")
    p.add_argument("--queue-size", type=int, help="requests that may wait for a slot before 429")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--config", help="YAML file of settings (applied before env and options)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--show-config", action="store_true", help="print the resolved settings and exit")
    return p


CLI_FIELDS = ("model", "host", "port", "token_file", "profile", "voices_dir", "max_streams", "queue_size", "device")


def main(argv: list[str] | None = None, args=None) -> int:
    """Parse `serve` options (or take parsed `args`), resolve settings, serve. Returns the exit code."""
    args = args if args is not None else build_parser().parse_args(argv)
    cli = {name: getattr(args, name, None) for name in CLI_FIELDS}
    try:
        settings = load_settings(args.config, **cli)
    except (SettingsError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if args.show_config:
        print(json.dumps(settings.as_dict(), indent=2))
        return 0
    return serve(settings, cli, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
