"""The gateway's HAProxy config, rendered from the fleet's replicas: a pure function (the same input gives the same
text), so it is tested without HAProxy.

Why the config has one small `listen` per replica: HAProxy 2.6 picks the server after `http-request` rules ran, so a
backend cannot set "the chosen server's token". The fleet backend therefore balances (leastconn, health checks on
/ready) over UNIX sockets, each one a per-replica proxy that sets that replica's `Authorization` and forwards to its
address. The client-facing token is checked once, at the frontend (401 otherwise; /health and the playground page,
`/` and `/static/*`, stay public: the page asks for the token and sends it with every API call).

Why a second backend: a conversation's turns live in one replica's memory, so every request that names one (the
`conversation` of a speech body, or the path `/v1/conversations/{id}...`) goes to the `fleet_sticky` backend, which
hashes the id (consistent: a replica joining or leaving moves only the conversations it takes or held) over the same
per-replica sockets. Its servers `track` the fleet backend's, so one health check and one `state drain` (which
HAProxy passes to tracking servers) take a replica out of both. Requests without a conversation keep leastconn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from deploy.errors import UsageError

BACKEND = "fleet"
STICKY = "fleet_sticky"  # requests that name a conversation: hashed on its id
FRONTEND = "csm"
_TOKEN_OK = re.compile(r"^[A-Za-z0-9._~+/=-]{8,512}$")  # nothing HAProxy's config or log-format would interpret


@dataclass(frozen=True)
class Backend:
    """One replica as the gateway sees it: its HAProxy name, an address reachable from here, and its own token."""

    name: str
    address: str  # host:port (a local port for the local provider, an SSH tunnel's port, or a mapped port)
    token: str
    ca_file: str | None = None  # an https replica: its pinned certificate, the only one HAProxy accepts from it


@dataclass(frozen=True)
class GatewayConfig:
    client_token: str
    sockets_dir: str
    state_file: str
    bind: str = "127.0.0.1"
    port: int = 8080
    check_interval_ms: int = 1000
    fall: int = 2  # failed /ready checks before a replica gets no new requests
    rise: int = 1
    timeout_connect_s: int = 5
    timeout_client_s: int = 600  # a streamed response may take minutes: idle time between chunks is what counts
    timeout_server_s: int = 600
    timeout_tunnel_s: int = 3600
    timeout_queue_s: int = 60
    hard_stop_after_s: int = 3600  # how long an old worker may keep finishing streams after a reload
    retries: int = 2


def _check_token(what: str, token: str) -> None:
    if not _TOKEN_OK.match(token or ""):
        raise UsageError(
            f"{what}: the token must be 8-512 characters of [A-Za-z0-9._~+/=-] to go into HAProxy's config"
        )


def _check_address(name: str, address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in " \"'#\\"):
        raise UsageError(f"replica {name}: address {address!r} is not host:port")


def _check_ca_file(name: str, path: str | None) -> None:
    if path is not None and (not path.startswith("/") or any(c.isspace() or c in "\"'#\\" for c in path)):
        raise UsageError(f"replica {name}: certificate path {path!r} must be absolute, without spaces or quotes")


def _server_line(b: Backend) -> str:
    """`server replica ADDRESS`, with TLS towards an https replica: HAProxy verifies the replica against its pinned
    certificate alone (`verify required ca-file`), so only the key that signed it is accepted; the bearer token it
    adds travels encrypted."""
    if b.ca_file is None:
        return f"    server replica {b.address}"
    return f"    server replica {b.address} ssl verify required ca-file {b.ca_file}"


def _conversation_rules() -> list[str]:
    """The frontend lines that find a request's conversation id and send it to the sticky backend. The speech body
    is whole here (`option http-buffer-request`) up to HAProxy's buffer (~15 KB); a longer one (context audio) is
    searched for the key in what is buffered. (The regex sits in double quotes inside a single-quoted word: HAProxy
    would otherwise end the converter's arguments at its first `)` or `,`.)"""
    key = r"\"conversation\"[[:space:]]*:[[:space:]]*\"([A-Za-z0-9_.-]+)\""  # quotes escaped for the argument
    found_in_body = f"{{ req.body -m reg '{key.replace(chr(92), '')}' }}"  # an ACL pattern takes them as they are
    return [
        "    acl speech path /v1/audio/speech",
        "    acl conversation_path path_reg ^/v1/conversations/[A-Za-z0-9_.-]+(/|$)",
        "    http-request set-var(txn.conversation) path,field(4,/) if conversation_path",
        "    http-request set-var(txn.conversation) req.body,json_query('$.conversation') if speech METH_POST",
        f"""    http-request set-var(txn.conversation) 'req.body,regsub("(?s)^.*{key}.*$","\\1")' """
        f"if speech METH_POST !{{ var(txn.conversation) -m found }} {found_in_body}",
        f"    use_backend {STICKY} if {{ var(txn.conversation) -m found }}",
    ]


def render(cfg: GatewayConfig, backends: Sequence[Backend]) -> str:
    """The whole HAProxy 2.6 config for one fleet: a pure function (the same input gives the same text)."""
    _check_token("gateway", cfg.client_token)
    names = [b.name for b in backends]
    if len(set(names)) != len(names):
        raise UsageError(f"replica names must be unique, got {names}")
    for b in backends:
        if not re.match(r"^[A-Za-z0-9_-]{1,32}$", b.name):
            raise UsageError(f"replica name {b.name!r} is not a valid HAProxy server name")
        _check_address(b.name, b.address)
        _check_token(f"replica {b.name}", b.token)
        _check_ca_file(b.name, b.ca_file)
    sock = cfg.sockets_dir.rstrip("/")
    unauthorized = (
        '{\\"error\\":{\\"message\\":\\"missing or wrong bearer token\\",'
        '\\"type\\":\\"invalid_request_error\\",\\"code\\":\\"invalid_api_key\\"}}'
    )
    lines = [
        "# generated by `deploy gateway` from the ledger; holds tokens: keep 0600, do not edit (it is rewritten)",
        "global",
        "    master-worker",
        f"    stats socket {sock}/admin.sock mode 600 level admin expose-fd listeners",
        f"    server-state-file {cfg.state_file}",
        f"    hard-stop-after {cfg.hard_stop_after_s}s",
        "",
        "defaults",
        "    mode http",
        "    load-server-state-from-file global",
        "    option http-buffer-request  # the small JSON request whole before a replica is picked: L7 retries need it",
        "    no option httpclose",
        f"    timeout connect {cfg.timeout_connect_s}s",
        f"    timeout client {cfg.timeout_client_s}s",
        f"    timeout server {cfg.timeout_server_s}s",
        f"    timeout tunnel {cfg.timeout_tunnel_s}s",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 30s",
        f"    timeout queue {cfg.timeout_queue_s}s",
        "    timeout check 5s",
        "",
        f"frontend {FRONTEND}",
        f"    bind {cfg.bind}:{cfg.port}",
        "    option forwardfor",
        "    acl public path /health /  # liveness, and the playground page: it holds no data and asks for the token",
        "    acl public path_beg /static/  # the page's own script and style",
        f'    acl authorized req.hdr(Authorization) -m str "Bearer {cfg.client_token}"',
        f'    http-request return status 401 content-type application/json string "{unauthorized}" '
        "hdr WWW-Authenticate Bearer if !authorized !public",
        *_conversation_rules(),
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        "    balance leastconn  # streams are long: the replica with the fewest open ones gets the next",
        "    option httpchk",
        "    http-check send meth GET uri /ready  # the replica's token is added by its own proxy below",
        "    http-check expect status 200",
        "    retry-on conn-failure empty-response response-timeout 502 503 504  # a replica died or is not ready: try another",
        "    option redispatch 1",
        f"    retries {cfg.retries}",
        f"    default-server check inter {cfg.check_interval_ms}ms fall {cfg.fall} rise {cfg.rise}",
    ]
    lines += [f"    server {b.name} unix@{sock}/{b.name}.sock" for b in backends]
    lines += [
        "",
        f"backend {STICKY}",
        "    balance hash var(txn.conversation)  # one conversation, one replica: its turns are in that one's memory",
        "    hash-type consistent",
        "    retry-on conn-failure empty-response response-timeout 502 503 504  # it died: another starts it anew",
        "    option redispatch 1",
        f"    retries {cfg.retries}",
    ]
    lines += [f"    server {b.name} unix@{sock}/{b.name}.sock track {BACKEND}/{b.name}" for b in backends]
    for b in backends:
        lines += [
            "",
            f"listen {b.name}",
            f"    bind unix@{sock}/{b.name}.sock mode 600",
            f'    http-request set-header Authorization "Bearer {b.token}"',
            "    retries 0  # fail fast: the fleet backend retries the request on another replica",
            _server_line(b),
        ]
    return "\n".join(lines) + "\n"


def address_of(url: str) -> str:
    """http(s)://127.0.0.1:8001 -> 127.0.0.1:8001 (the form a `server` line takes; TLS is the Backend's ca_file)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
        raise UsageError(f"endpoint {url!r} is not http(s)://host:port")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port}"
