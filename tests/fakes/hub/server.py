"""The stand-in's HTTP server: set-up (repos, TLS, addresses), routing a request to its endpoint, the record of what
was asked, and the handler that writes each answer."""

from __future__ import annotations

import secrets
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes.hub import access, metadata
from tests.fakes.hub.answers import UNKNOWN_PAGE, HubRequest, Response, error
from tests.fakes.hub.content import HubRepo
from tests.fakes.hub.downloads import Downloads
from tests.fakes.hub.tls import TlsFiles


class FakeHub:
    """The stand-in. `granted` tokens may read gated repos; `outsiders` are valid tokens of users without access."""

    def __init__(
        self,
        *,
        granted: tuple[str, ...] = (),
        outsiders: tuple[str, ...] = (),
        tls: TlsFiles | None = None,
        throttle_bps: int | None = None,
    ) -> None:
        self._gate = access.Gate(granted, outsiders)
        self._downloads = Downloads(throttle_bps)
        self.tls = tls
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[HubRequest] = []
        self._lock = threading.Lock()
        self.held = self._downloads.held  # set while a download sits at the hold offset
        self._httpd: ThreadingHTTPServer | None = None
        self.port = 0

    # ---- set-up

    def add_repo(self, repo_id: str, folder: Path, *, gated: bool = False, branches: tuple[str, ...] = ()) -> HubRepo:
        """Serve every file under `folder` as repo `repo_id` at one commit, on `main` and any extra `branches`."""
        repo = HubRepo.from_folder(repo_id, folder, gated=gated, branches=branches)
        self.repos[repo_id] = repo
        return repo

    def start(self) -> FakeHub:
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.hub = self
        httpd.ssl_context = None
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls.cert, self.tls.key)
            httpd.ssl_context = ctx
        self._httpd = httpd
        self.port = httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, name="fake-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        self.release_downloads()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- addresses

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        """What HF_ENDPOINT should say."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def cdn_url(self) -> str:
        return f"{self.scheme}://localhost:{self.port}"

    def client_env(self) -> dict[str, str]:
        """Environment a client process needs to use the stand-in (add HF_HOME etc. per test)."""
        env = {"HF_ENDPOINT": self.url}
        if self.tls:
            env["REQUESTS_CA_BUNDLE"] = str(self.tls.cert)
        return env

    # ---- download pacing

    @property
    def throttle_bps(self) -> int | None:
        return self._downloads.throttle_bps

    @throttle_bps.setter
    def throttle_bps(self, value: int | None) -> None:
        self._downloads.throttle_bps = value

    def hold_downloads(self, at_byte: int) -> None:
        """CDN downloads stop after byte offset `at_byte` until `release_downloads()` (or HOLD_TIMEOUT_S)."""
        self._downloads.hold(at_byte)

    def release_downloads(self) -> None:
        self._downloads.release()

    # ---- what was asked

    def fetched(self, repo_id: str | None = None) -> list[str]:
        """Files whose bytes were served (resolve GETs of small files, CDN GETs), in order."""
        return [
            f"{r.repo}/{r.file}"
            for r in list(self.requests)
            if r.method == "GET"
            and r.endpoint in ("resolve", "cdn")
            and r.status in (200, 206)
            and r.file is not None
            and r.sent > 0
            and (repo_id is None or r.repo == repo_id)
        ]

    def unknown(self) -> list[HubRequest]:
        """Requests for endpoints the stand-in does not implement (a client used something it does not model)."""
        return [r for r in list(self.requests) if r.endpoint is None]

    # ---- request handling (called from handler threads)

    def _answer(
        self, method: str, raw_path: str, query: dict[str, list[str]], caller: str, range_header: str | None
    ) -> Response:
        """Route one request; the response says which endpoint, repo and file it was about (for the record)."""
        parts = [unquote(p) for p in raw_path.strip("/").split("/")] if raw_path.strip("/") else []
        endpoint, repo_id, path = None, None, None
        resp = error(404, UNKNOWN_PAGE)
        if len(parts) >= 4 and parts[0] == "api" and parts[1] == "models":
            repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            if not rest or (rest[0] == "revision" and len(rest) == 2):
                endpoint = "model_info"
                found = self._locate(caller, repo_id, rest[1] if rest else "main", metadata=True)
                resp = found if isinstance(found, Response) else metadata.model_info(*found)
            elif rest[0] == "tree" and len(rest) >= 2:
                endpoint, path = "tree", "/".join(rest[2:])
                found = self._locate(caller, repo_id, rest[1])
                resp = found if isinstance(found, Response) else metadata.tree(*found, path, query)
        elif parts == ["api", "whoami-v2"]:
            endpoint, resp = "whoami", access.whoami(caller)
        elif len(parts) == 4 and parts[0] == "lfs":
            endpoint, repo_id = "cdn", f"{parts[1]}/{parts[2]}"
            resp = self._downloads.cdn(self.repos, repo_id, parts[3], query, range_header)
        elif len(parts) >= 5 and parts[2] == "resolve":
            endpoint, repo_id, path = "resolve", f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
            found = self._locate(caller, repo_id, parts[3])
            resp = found if isinstance(found, Response) else self._downloads.resolve(*found, path, self.cdn_url)
        resp.endpoint, resp.repo = endpoint, repo_id
        resp.path_in_repo = resp.path_in_repo or path
        return resp

    def _locate(
        self, caller: str, repo_id: str, revision: str, *, metadata: bool = False
    ) -> tuple[HubRepo, str] | Response:
        return access.locate(caller, self.repos, repo_id, revision, site=self.url, metadata=metadata)

    def _record(self, entry: HubRequest) -> None:
        with self._lock:
            self.requests.append(entry)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: FakeHub
    ssl_context: ssl.SSLContext | None

    def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        """TLS handshake in the request's own thread, so a slow client never blocks accept()."""
        if self.ssl_context is None:
            return super().finish_request(request, client_address)
        try:
            conn = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return None
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()

    def handle_error(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        pass  # a client that hangs up mid-body is not the stand-in's failure


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1"
    server: _Server

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # `requests` is the log; http.server's own would print request lines to stderr

    def _serve(self, *, head: bool) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        caller = hub._gate.caller(self.headers.get("Authorization"))
        resp = hub._answer(self.command, split.path, parse_qs(split.query), caller, self.headers.get("Range"))
        entry = HubRequest(
            method=self.command,
            host=self.headers.get("Host", ""),
            path=unquote(split.path),
            authorized=bool(self.headers.get("Authorization")),
            caller=caller,
            status=resp.status,
            endpoint=resp.endpoint,
            repo=resp.repo,
            file=resp.path_in_repo,
        )
        hub._record(entry)
        length = (resp.end - resp.start) if resp.file is not None else len(resp.body)
        self.send_response(resp.status)
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.send_header("X-Request-Id", f"Root=1-{secrets.token_hex(12)}")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if head:
            return
        if resp.file is None:
            self.wfile.write(resp.body)
            entry.sent = len(resp.body)
            return
        hub._downloads.stream(self.wfile, resp, entry)
