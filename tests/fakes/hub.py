"""A local stand-in for the Hugging Face Hub, for the real huggingface_hub / transformers / moshi clients to download
from (the Hub cannot be reached here, and `sesame/csm-1b` is gated there anyway). Clients find it through
`HF_ENDPOINT` (read once, when `huggingface_hub.constants` is imported: set it before the client process starts).

What it speaks is what huggingface_hub 0.36.2 sends for a download (file_download.py, hf_api.py, utils/_http.py):
- `HEAD|GET /{org}/{name}/resolve/{revision}/{path}`: a small file answers 200 with `ETag` (git blob sha1),
  `X-Repo-Commit` and `Content-Length`; an LFS file (`*.safetensors`, or over 10 MiB) answers 302 to the CDN with
  `X-Linked-Etag` (sha256), `X-Linked-Size` and `X-Repo-Commit`, as the Hub does.
- `GET /lfs/{org}/{name}/{sha256}?Expires=..&Signature=..`: the CDN. It is the same server under another host name
  (`localhost` instead of `127.0.0.1`), so huggingface_hub drops the Authorization header on the way there, as it
  does for the real CDN; the signed URL is the only credential. Bodies go out in 1 MiB writes with a correct
  `Content-Length` (and `Range` for resumes), optionally throttled (`throttle_bps`) or held at a byte offset
  (`hold_downloads`) so a test can watch the `.incomplete` file grow.
- `GET /api/models/{org}/{name}[/revision/{rev}]` (model_info: public metadata, gated repos included) and
  `GET /api/models/{org}/{name}/tree/{rev}[/{path}]` (list_repo_tree / list_repo_files; gated like a download),
  `GET /api/whoami-v2` (what `login()` checks before it writes the token file).

Answers when access fails, as the Hub gives them (headers `X-Error-Code` / `X-Error-Message`, JSON body `{"error"}`):
- a token it does not know: 401, no code, "Invalid credentials in Authorization header" (the Hub checks any token);
- gated repo, no token: 401 `GatedRepo`; a valid token whose user has no access: 403 `GatedRepo`;
- unknown repo: 401 "Invalid username or password." with no code when anonymous (the Hub will not say whether a
  private repo exists), 404 `RepoNotFound` with a token;
- unknown revision: 404 `RevisionNotFound`; unknown file: 404 `EntryNotFound` (with `X-Repo-Commit`).
huggingface_hub maps a bare 401 on a repo URL to RepositoryNotFoundError only for `https://` URLs (REPO_API_REGEX),
so the stand-in serves TLS by default (a self-signed certificate, trusted through `REQUESTS_CA_BUNDLE`).

Tokens: the stand-in keeps sha256 digests of the tokens it accepts, never the tokens; each request is recorded
(`requests`) with whether an Authorization header came and what kind of caller it was, never the header's value.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
import shlex
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

MIB = 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".model", ".msgpack", ".h5", ".onnx")
LFS_MIN_SIZE = 10 * MIB  # the Hub refuses plain git files above 10 MiB
WRITE_CHUNK = MIB
HOLD_TIMEOUT_S = 300.0  # a held download goes on by itself after this, so a failed test cannot hang the server

MIMI_REPO = "kyutai/moshiko-pytorch-bf16"  # moshi.models.loaders.DEFAULT_REPO
MIMI_FILENAME = "tokenizer-e351c8d8-checkpoint125.safetensors"  # moshi.models.loaders.MIMI_NAME

INVALID_TOKEN = "Invalid credentials in Authorization header"
UNKNOWN_REPO_ANONYMOUS = "Invalid username or password."
UNKNOWN_REPO = "Repository not found"
GATED_ANONYMOUS = (
    "Access to model {repo} is restricted. You must have access to it and be authenticated to access it. Please log in."
)
GATED_OUTSIDER = (
    "Access to model {repo} is restricted and you are not in the authorized list. "
    "Visit {site}/{repo} to ask for access."
)
UNKNOWN_REVISION = "Invalid rev id: {revision}"
UNKNOWN_ENTRY = "Entry not found"
UNKNOWN_PAGE = "Sorry, we can't find the page you are looking for."


# ----------------------------------------------------------------------------------------------------------- content


@functools.lru_cache(maxsize=256)
def _digests(path: str, mtime_ns: int, size: int) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file; cached by (path, mtime, size) so a 385 MB file is hashed once a session."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(8 * MIB):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@dataclass(frozen=True)
class HubFile:
    path: str  # path in the repo, "/"-separated
    source: Path
    size: int
    sha256: str
    blob_sha1: str
    lfs: bool

    @classmethod
    def from_disk(cls, path_in_repo: str, source: Path) -> HubFile:
        st = source.stat()
        sha256, blob_sha1 = _digests(str(source), st.st_mtime_ns, st.st_size)
        lfs = source.suffix in LFS_SUFFIXES or st.st_size > LFS_MIN_SIZE
        return cls(path_in_repo, source, st.st_size, sha256, blob_sha1, lfs)

    @property
    def etag(self) -> str:
        """What huggingface_hub names the cached blob after: sha256 for LFS files, the git blob sha1 otherwise."""
        return self.sha256 if self.lfs else self.blob_sha1

    def pointer_sha1(self) -> str:
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n"
        return _git_sha1(pointer.encode())


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]
    gated: bool
    commit: str
    branches: dict[str, str]

    def resolve(self, revision: str) -> str | None:
        """The commit a branch name or a full commit sha stands for; None when neither."""
        if revision in self.branches:
            return self.branches[revision]
        return self.commit if revision == self.commit else None


@dataclass
class HubRequest:
    """One request as the stand-in saw it. `authorized` says an Authorization header came; its value is not kept."""

    method: str
    host: str
    path: str  # without the query (the CDN's signature lives there)
    authorized: bool
    caller: str  # anonymous | granted | outsider | invalid
    status: int
    endpoint: str | None = None  # resolve | cdn | model_info | tree | whoami; None: not an endpoint it models
    repo: str | None = None
    file: str | None = None  # path in the repo (resolve, cdn, tree)
    sent: int = 0  # body bytes written


# ----------------------------------------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # also the CA bundle clients trust (REQUESTS_CA_BUNDLE)
    key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1 and localhost (openssl CLI)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / "hub-cert.pem", folder / "hub-key.pem")
    req = shlex.split("req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost")
    names = "subjectAltName=DNS:localhost,IP:127.0.0.1"
    keys = ["-keyout", str(files.key), "-out", str(files.cert)]
    subprocess.run(["openssl", *req, "-addext", names, *keys], check=True, capture_output=True, timeout=60)
    return files


# ----------------------------------------------------------------------------------------------------------- server


@dataclass
class _Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: HubFile | None = None  # stream this file's bytes [start, end) instead of `body`
    start: int = 0
    end: int = 0
    endpoint: str | None = None  # resolve | cdn | model_info | tree | whoami; None: not an endpoint it models
    repo: str | None = None
    path_in_repo: str | None = None


def _error(status: int, message: str, code: str | None = None, **headers: str) -> _Response:
    out = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": message, **headers}
    if code:
        out["X-Error-Code"] = code
    return _Response(status, out, json.dumps({"error": message}).encode())


def _json(data: object) -> _Response:
    return _Response(200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(data).encode())


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
        self._granted = frozenset(_token_digest(t) for t in granted)
        self._outsiders = frozenset(_token_digest(t) for t in outsiders)
        self.tls = tls
        self.throttle_bps = throttle_bps
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[HubRequest] = []
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(16)
        self._hold_at: int | None = None
        self._release = threading.Event()
        self.held = threading.Event()  # set while a download sits at the hold offset
        self._httpd: ThreadingHTTPServer | None = None
        self.port = 0

    # ---- set-up

    def add_repo(self, repo_id: str, folder: Path, *, gated: bool = False, branches: tuple[str, ...] = ()) -> HubRepo:
        """Serve every file under `folder` as repo `repo_id` at one commit, on `main` and any extra `branches`."""
        files = {
            p.relative_to(folder).as_posix(): HubFile.from_disk(p.relative_to(folder).as_posix(), p)
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        tree = "\n".join(f"{f.path} {f.etag}" for f in files.values())
        commit = hashlib.sha1(f"{repo_id}\n{tree}".encode()).hexdigest()
        repo = HubRepo(repo_id, files, gated, commit, {b: commit for b in ("main", *branches)})
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

    def hold_downloads(self, at_byte: int) -> None:
        """CDN downloads stop after byte offset `at_byte` until `release_downloads()` (or HOLD_TIMEOUT_S)."""
        self._release.clear()
        self.held.clear()
        self._hold_at = at_byte

    def release_downloads(self) -> None:
        self._hold_at = None
        self._release.set()

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

    def _caller(self, authorization: str | None) -> str:
        if not authorization:
            return "anonymous"
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return "invalid"
        digest = _token_digest(value.strip())
        if digest in self._granted:
            return "granted"
        return "outsider" if digest in self._outsiders else "invalid"

    def _answer(
        self, method: str, raw_path: str, query: dict[str, list[str]], caller: str, range_header: str | None
    ) -> _Response:
        """Route one request; the response says which endpoint, repo and file it was about (for the record)."""
        parts = [unquote(p) for p in raw_path.strip("/").split("/")] if raw_path.strip("/") else []
        endpoint, repo_id, path = None, None, None
        resp = _error(404, UNKNOWN_PAGE)
        if len(parts) >= 4 and parts[0] == "api" and parts[1] == "models":
            repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            if not rest or (rest[0] == "revision" and len(rest) == 2):
                endpoint, resp = "model_info", self._model_info(caller, repo_id, rest[1] if rest else "main")
            elif rest[0] == "tree" and len(rest) >= 2:
                endpoint, path = "tree", "/".join(rest[2:])
                resp = self._tree(caller, repo_id, rest[1], path, query)
        elif parts == ["api", "whoami-v2"]:
            endpoint, resp = "whoami", self._whoami(caller)
        elif len(parts) == 4 and parts[0] == "lfs":
            endpoint, repo_id = "cdn", f"{parts[1]}/{parts[2]}"
            resp = self._cdn(repo_id, parts[3], query, range_header)
        elif len(parts) >= 5 and parts[2] == "resolve":
            endpoint, repo_id, path = "resolve", f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
            resp = self._resolve(method, caller, repo_id, parts[3], path)
        resp.endpoint, resp.repo = endpoint, repo_id
        resp.path_in_repo = resp.path_in_repo or path
        return resp

    def _whoami(self, caller: str) -> _Response:
        """What `huggingface_hub.login()` checks before it writes the token file."""
        if caller not in ("granted", "outsider"):
            return _error(401, INVALID_TOKEN)
        token = {"displayName": "csm-deploy-test", "role": "read"}
        return _json({"type": "user", "name": caller, "auth": {"type": "access_token", "accessToken": token}})

    def _access(self, caller: str, repo_id: str, *, metadata: bool = False) -> HubRepo | _Response:
        """The repo, or the refusal the Hub gives this caller. Metadata (model_info) of gated repos is public."""
        if caller == "invalid":
            return _error(401, INVALID_TOKEN)
        repo = self.repos.get(repo_id)
        if repo is None:
            if caller == "anonymous":
                return _error(401, UNKNOWN_REPO_ANONYMOUS)
            return _error(404, UNKNOWN_REPO, "RepoNotFound")
        if repo.gated and not metadata and caller != "granted":
            if caller == "anonymous":
                return _error(401, GATED_ANONYMOUS.format(repo=repo_id), "GatedRepo")
            return _error(403, GATED_OUTSIDER.format(repo=repo_id, site=self.url), "GatedRepo")
        return repo

    def _commit(self, repo: HubRepo, revision: str) -> str | _Response:
        commit = repo.resolve(revision)
        if commit is None:
            return _error(404, UNKNOWN_REVISION.format(revision=revision), "RevisionNotFound")
        return commit

    def _resolve(self, method: str, caller: str, repo_id: str, revision: str, path: str) -> _Response:
        repo = self._access(caller, repo_id)
        if isinstance(repo, _Response):
            return repo
        commit = self._commit(repo, revision)
        if isinstance(commit, _Response):
            return commit
        f = repo.files.get(path)
        if f is None:
            return _error(404, UNKNOWN_ENTRY, "EntryNotFound", **{"X-Repo-Commit": commit})
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update(
                {
                    "Location": self._signed_cdn_url(repo_id, f),
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                    "ETag": f'"{f.pointer_sha1()}"',
                }
            )
            return _Response(302, headers)
        headers.update({"ETag": f'"{f.blob_sha1}"', "Content-Type": "application/octet-stream"})
        return _Response(200, headers, file=f, start=0, end=f.size)

    def _signed_cdn_url(self, repo_id: str, f: HubFile) -> str:
        expires = str(int(time.time()) + 3600)
        signature = self._sign(repo_id, f.sha256, expires)
        disposition = quote(f"inline; filename*=UTF-8''{f.path.rsplit('/', 1)[-1]};", safe="")
        return (
            f"{self.cdn_url}/lfs/{repo_id}/{f.sha256}?response-content-disposition={disposition}"
            f"&Expires={expires}&Signature={signature}"
        )

    def _sign(self, repo_id: str, sha256: str, expires: str) -> str:
        return hmac.new(self._secret, f"{repo_id}:{sha256}:{expires}".encode(), "sha256").hexdigest()

    def _cdn(self, repo_id: str, sha256: str, query: dict[str, list[str]], range_header: str | None) -> _Response:
        expires, signature = query.get("Expires", [""])[0], query.get("Signature", [""])[0]
        good = hmac.compare_digest(signature, self._sign(repo_id, sha256, expires))
        if not good or not expires.isdigit() or int(expires) < time.time():
            return _Response(403, {"Content-Type": "text/plain"}, b"Access denied: bad or expired signature")
        repo = self.repos.get(repo_id)
        f = next((f for f in repo.files.values() if f.sha256 == sha256), None) if repo else None
        if f is None:
            return _Response(404, {"Content-Type": "text/plain"}, b"NoSuchKey")
        name = f.path.rsplit("/", 1)[-1]
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";",
            "ETag": f'"{f.sha256}"',
            "Accept-Ranges": "bytes",
        }
        start, end = _byte_range(range_header, f.size)
        if start is None:
            return _Response(416, {"Content-Range": f"bytes */{f.size}", "Content-Type": "text/plain"}, b"")
        status = 200
        if range_header:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        return _Response(status, headers, file=f, start=start, end=end, path_in_repo=f.path)

    def _model_info(self, caller: str, repo_id: str, revision: str) -> _Response:
        repo = self._access(caller, repo_id, metadata=True)
        if isinstance(repo, _Response):
            return repo
        commit = self._commit(repo, revision)
        if isinstance(commit, _Response):
            return commit
        return _json(
            {
                "_id": repo.commit[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit,
                "private": False,
                "disabled": False,
                "gated": "manual" if repo.gated else False,
                "library_name": "transformers",
                "tags": ["transformers", "safetensors"],
                "downloads": 0,
                "likes": 0,
                "siblings": [{"rfilename": p} for p in repo.files],
            }
        )

    def _tree(self, caller: str, repo_id: str, revision: str, folder: str, query: dict[str, list[str]]) -> _Response:
        repo = self._access(caller, repo_id)
        if isinstance(repo, _Response):
            return repo
        commit = self._commit(repo, revision)
        if isinstance(commit, _Response):
            return commit
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        below = [f for p, f in repo.files.items() if p.startswith(prefix)]
        if prefix and not below:
            return _error(404, UNKNOWN_ENTRY, "EntryNotFound", **{"X-Repo-Commit": commit})
        entries: dict[str, dict] = {}
        for f in below:
            rest = f.path[len(prefix) :]
            if "/" in rest:  # a folder on the way down
                parts = rest.split("/")[:-1]
                steps = range(1, len(parts) + 1) if recursive else range(1, 2)
                for n in steps:
                    sub = prefix + "/".join(parts[:n])
                    entries.setdefault(
                        sub, {"type": "directory", "oid": _git_sha1(sub.encode()), "size": 0, "path": sub}
                    )
                if not recursive:
                    continue
            entry = {
                "type": "file",
                "oid": f.blob_sha1 if not f.lfs else f.pointer_sha1(),
                "size": f.size,
                "path": f.path,
            }
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            entries[f.path] = entry
        return _json(sorted(entries.values(), key=lambda e: e["path"]))

    def _record(self, entry: HubRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def _pace(self, offset: int, n: int) -> int:
        """How many of the next `n` bytes (starting at file `offset`) may go before the hold offset."""
        hold = self._hold_at
        if hold is not None and offset < hold < offset + n:
            return hold - offset
        return n

    def _at_hold(self, offset: int) -> None:
        if self._hold_at is not None and offset == self._hold_at:
            self.held.set()
            self._release.wait(HOLD_TIMEOUT_S)
            self.held.clear()


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _byte_range(header: str | None, size: int) -> tuple[int | None, int]:
    """[start, end) for `Range: bytes=a-b` / `bytes=a-` (whole file without a header); start None if unsatisfiable."""
    if not header:
        return 0, size
    spec = header.strip().removeprefix("bytes=").split(",")[0].strip()
    first, _, last = spec.partition("-")
    try:
        if first == "":
            start, end = max(size - int(last), 0), size
        else:
            start, end = int(first), (min(int(last) + 1, size) if last else size)
    except ValueError:
        return None, 0
    return (start, end) if start < end or (start == end == size == 0) else (None, 0)


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
        caller = hub._caller(self.headers.get("Authorization"))
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
        self._stream(hub, resp, entry)

    def _stream(self, hub: FakeHub, resp: _Response, entry: HubRequest) -> None:
        offset = resp.start
        chunk = max(1024, min(WRITE_CHUNK, hub.throttle_bps // 10)) if hub.throttle_bps else WRITE_CHUNK
        with open(resp.file.source, "rb") as f:
            f.seek(offset)
            while offset < resp.end:
                n = hub._pace(offset, min(chunk, resp.end - offset))
                data = f.read(n)
                self.wfile.write(data)
                offset += len(data)
                entry.sent += len(data)
                if hub.throttle_bps:
                    time.sleep(len(data) / hub.throttle_bps)
                hub._at_hold(offset)


# ----------------------------------------------------------------------------------------------------------- content builders


def tiny_csm_tokenizer():
    """A byte-level tokenizer with CSM's four specials (the values of csm_runtime's tiny tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ("<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>")
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for tok in specials:
        vocab[tok] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=specials[0], eos_token=specials[1], pad_token=specials[2]
    )
    tok.add_special_tokens({"additional_special_tokens": [specials[2], specials[3]]})
    return tok


def tiny_csm_config(tokenizer):
    """A 2-layer CSM with the real codebook layout (32 x 2051) and a tiny HF Mimi codec (csm_runtime's tiny values)."""
    from transformers import CsmConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|begin_of_text|>", "<|AUDIO|>", "<|audio_eos|>")}
    depth = {
        "num_codebooks": 32,
        "backbone_hidden_size": 128,
        "vocab_size": 2051,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 33,
    }
    codec = {
        "model_type": "mimi",
        "hidden_size": 32,
        "num_filters": 4,
        "num_hidden_layers": 1,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "codebook_dim": 16,
        "vector_quantization_hidden_dimension": 16,
        "upsample_groups": 32,
        "codebook_size": 2048,
    }
    return CsmConfig(
        num_codebooks=32,
        vocab_size=2051,
        text_vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=ids["<|begin_of_text|>"],
        pad_token_id=ids["<|AUDIO|>"],
        audio_token_id=ids["<|AUDIO|>"],
        audio_eos_token_id=ids["<|audio_eos|>"],
        depth_decoder_config=depth,
        codec_config=codec,
    )


def build_csm_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A random tiny CSM in transformers' format (config, generation config, model.safetensors, tokenizer files)."""
    import torch
    from transformers import CsmForConditionalGeneration

    tokenizer = tiny_csm_tokenizer()
    torch.manual_seed(seed)
    model = CsmForConditionalGeneration(tiny_csm_config(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_mimi_repo(folder: Path, seed: int = 0) -> Path:
    """Random weights in the layout of Kyutai's Mimi file (moshi's full-size config, 318 tensors, ~385 MB float32),
    at the name moshi downloads, so `moshi.models.loaders.get_mimi(path)` loads it strictly."""
    import torch
    from moshi.models import loaders
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    mimi = loaders.get_mimi(None, device="cpu", num_codebooks=32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in mimi.state_dict().items()}, folder / MIMI_FILENAME)
    return folder
