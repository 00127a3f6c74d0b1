"""`csm-runtime serve`: settings -> profile -> app -> uvicorn, after refusing unsafe binds and checkpoints the Hub
will not hand over.

A non-loopback bind needs a bearer token and serves HTTPS only (server/tls.py: your certificate, or a self-signed one
made at start); loopback stays plain HTTP (reach it through an SSH tunnel). A Hub checkpoint is checked with one HEAD
before the server binds, so a gated repository without access is one line and exit 2 (engine/hub.py).

Usage (listed in cli.py):
    csm-runtime serve --model tiny-random --port 8000
    csm-runtime serve --model sesame/csm-1b --host 0.0.0.0 --token-file /run/secrets/token --profile auto
    csm-runtime serve --host 0.0.0.0 --token-file tok --hf-token-file hf-token --ssl-san 203.0.113.7
    csm-runtime serve --host 0.0.0.0 --token-file tok --ssl-certfile cert.pem --ssl-keyfile key.pem
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
    """Anything reachable from outside this machine must be behind a token, and the token file must hold one: an
    empty or unreadable file is refused here, before anything (the TLS directory) is written."""
    if not settings.token_file and not is_loopback(settings.host):
        raise ServeError(
            f"refusing to bind {settings.host}:{settings.port} without a token: anyone who can reach it could use the "
            "GPU. Pass --token-file FILE (or CSM_TOKEN_FILE), or bind 127.0.0.1 and tunnel."
        )
    from csm_runtime.server.dependencies import read_token

    read_token(settings.token_file)  # ValueError: the caller prints it on one line


def check_hub(settings: RuntimeSettings) -> None:
    """The Hub token file is readable, and the Hub hands this token the checkpoint (HubAccessError otherwise)."""
    from csm_runtime.engine.hub import check_access, read_hub_token

    check_access(settings.model, settings.revision, read_hub_token(settings.hf_token_file))


def setup_tls(settings: RuntimeSettings):
    """The certificate this bind serves with (None: plain HTTP on loopback); see server/tls.py."""
    from csm_runtime.server.tls import resolve_tls

    return resolve_tls(
        settings.host,
        public=not is_loopback(settings.host),
        certfile=settings.ssl_certfile,
        keyfile=settings.ssl_keyfile,
        tls_dir=settings.tls_dir,
        san=settings.ssl_san,
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
    from csm_runtime.server.connection_guard import uvicorn_config

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    try:
        check_bind(settings)
        tls = setup_tls(settings)
        settings, profile = resolve_profile(settings, cli)
        check_hub(settings)
        app = create_app(settings, profile=profile)
    except (ServeError, ValueError) as exc:  # TlsError, HubAccessError, SettingsError are ValueErrors
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    auth = "bearer token required" if settings.token_file else "no token (loopback only)"
    scheme = "https" if tls else "http"
    log.info("serving %s on %s://%s:%d (%s)", settings.model, scheme, settings.host, settings.port, auth)
    if tls is not None:
        kind = f"self-signed for {', '.join(tls.names)}" if tls.self_signed else "given"
        log.info(
            "TLS certificate %s (%s), sha256 %s; clients trust it: curl --cacert %s",
            tls.cert,
            kind,
            tls.sha256,
            tls.cert,
        )
    config = uvicorn_config(  # with a deadline on request headers (server/connection_guard.py)
        app,
        settings,
        log_level=log_level,
        ssl_certfile=str(tls.cert) if tls else None,
        ssl_keyfile=str(tls.key) if tls else None,
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
    p.add_argument(
        "--token-file",
        help="file holding the bearer token every route requires but /health and the playground page (/, /static/*); "
        "/openapi.json needs it too",
    )
    hf_default = "default: HF_TOKEN, then the file `hf auth login` wrote"
    p.add_argument("--hf-token-file", help=f"file holding the Hub token for a gated checkpoint ({hf_default})")
    p.add_argument("--ssl-certfile", help="TLS certificate (PEM); default for a non-loopback bind: a self-signed one")
    p.add_argument("--ssl-keyfile", help="its private key (PEM)")
    san = "a name or address the self-signed certificate also covers (a public IP mapped to this machine)"
    p.add_argument("--ssl-san", action="append", help=f"{san}; repeatable")
    p.add_argument("--tls-dir", help="where the self-signed certificate and key are kept (default ./tls)")
    p.add_argument("--profile", help="auto | off | PATH of a profile YAML")
    p.add_argument("--voices-dir", help="directory of extra voice YAML files")
    p.add_argument("--max-streams", type=int, help="streams decoded together (default: the profile's)")
    p.add_argument("--queue-size", type=int, help="requests that may wait for a slot before 429")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--config", help="YAML file of settings (applied before env and options)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--show-config", action="store_true", help="print the resolved settings and exit")
    return p


CLI_FIELDS = (
    "model",
    "host",
    "port",
    "token_file",
    "hf_token_file",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_san",
    "tls_dir",
    "profile",
    "voices_dir",
    "max_streams",
    "queue_size",
    "device",
)


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
