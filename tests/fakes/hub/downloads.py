"""Downloads: `resolve` (small files served, LFS files sent to the CDN), the CDN behind signed URLs (the only
credential there), byte ranges for resumes, and pacing (a throttle, a hold at a byte offset) so a test can watch a
download in progress."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from typing import BinaryIO
from urllib.parse import quote

from tests.fakes.hub.answers import UNKNOWN_ENTRY, HubRequest, Response, error
from tests.fakes.hub.content import MIB, HubFile, HubRepo

WRITE_CHUNK = MIB
HOLD_TIMEOUT_S = 300.0  # a held download goes on by itself after this, so a failed test cannot hang the server


class Downloads:
    def __init__(self, throttle_bps: int | None = None) -> None:
        self.throttle_bps = throttle_bps
        self._secret = secrets.token_bytes(16)
        self._hold_at: int | None = None
        self._release = threading.Event()
        self.held = threading.Event()  # set while a download sits at the hold offset

    # ---- the two endpoints

    def resolve(self, repo: HubRepo, commit: str, path: str, cdn_url: str) -> Response:
        f = repo.files.get(path)
        if f is None:
            return error(404, UNKNOWN_ENTRY, "EntryNotFound", **{"X-Repo-Commit": commit})
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update(
                {
                    "Location": self._signed_cdn_url(cdn_url, repo.repo_id, f),
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                    "ETag": f'"{f.pointer_sha1()}"',
                }
            )
            return Response(302, headers)
        headers.update({"ETag": f'"{f.blob_sha1}"', "Content-Type": "application/octet-stream"})
        return Response(200, headers, file=f, start=0, end=f.size)

    def cdn(
        self,
        repos: dict[str, HubRepo],
        repo_id: str,
        sha256: str,
        query: dict[str, list[str]],
        range_header: str | None,
    ) -> Response:
        expires, signature = query.get("Expires", [""])[0], query.get("Signature", [""])[0]
        good = hmac.compare_digest(signature, self._sign(repo_id, sha256, expires))
        if not good or not expires.isdigit() or int(expires) < time.time():
            return Response(403, {"Content-Type": "text/plain"}, b"Access denied: bad or expired signature")
        repo = repos.get(repo_id)
        f = next((f for f in repo.files.values() if f.sha256 == sha256), None) if repo else None
        if f is None:
            return Response(404, {"Content-Type": "text/plain"}, b"NoSuchKey")
        name = f.path.rsplit("/", 1)[-1]
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";",
            "ETag": f'"{f.sha256}"',
            "Accept-Ranges": "bytes",
        }
        start, end = byte_range(range_header, f.size)
        if start is None:
            return Response(416, {"Content-Range": f"bytes */{f.size}", "Content-Type": "text/plain"}, b"")
        status = 200
        if range_header:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        return Response(status, headers, file=f, start=start, end=end, path_in_repo=f.path)

    def _signed_cdn_url(self, cdn_url: str, repo_id: str, f: HubFile) -> str:
        expires = str(int(time.time()) + 3600)
        signature = self._sign(repo_id, f.sha256, expires)
        disposition = quote(f"inline; filename*=UTF-8''{f.path.rsplit('/', 1)[-1]};", safe="")
        return (
            f"{cdn_url}/lfs/{repo_id}/{f.sha256}?response-content-disposition={disposition}"
            f"&Expires={expires}&Signature={signature}"
        )

    def _sign(self, repo_id: str, sha256: str, expires: str) -> str:
        return hmac.new(self._secret, f"{repo_id}:{sha256}:{expires}".encode(), "sha256").hexdigest()

    # ---- pacing

    def hold(self, at_byte: int) -> None:
        """Downloads stop after byte offset `at_byte` until `release()` (or HOLD_TIMEOUT_S)."""
        self._release.clear()
        self.held.clear()
        self._hold_at = at_byte

    def release(self) -> None:
        self._hold_at = None
        self._release.set()

    def stream(self, out: BinaryIO, resp: Response, entry: HubRequest) -> None:
        """Write the file's bytes [start, end) in paced chunks, counted in the request's record as they go."""
        offset = resp.start
        chunk = max(1024, min(WRITE_CHUNK, self.throttle_bps // 10)) if self.throttle_bps else WRITE_CHUNK
        with open(resp.file.source, "rb") as f:
            f.seek(offset)
            while offset < resp.end:
                n = self._pace(offset, min(chunk, resp.end - offset))
                data = f.read(n)
                out.write(data)
                offset += len(data)
                entry.sent += len(data)
                if self.throttle_bps:
                    time.sleep(len(data) / self.throttle_bps)
                self._at_hold(offset)

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


def byte_range(header: str | None, size: int) -> tuple[int | None, int]:
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
