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

Modules: `server` (the HTTP server, routing), `content` (repos and files, their digests),
`access` (tokens, gating, the Hub's refusals), `metadata` (model_info, tree), `downloads` (resolve, the signed CDN,
pacing), `answers` (the request record, response shapes, error texts), `tls`, `builders` (the checkpoints it serves in tests).
"""

from tests.fakes.hub.answers import (
    GATED_ANONYMOUS,
    GATED_OUTSIDER,
    INVALID_TOKEN,
    UNKNOWN_REPO,
    UNKNOWN_REPO_ANONYMOUS,
    HubRequest,
)
from tests.fakes.hub.builders import MIMI_FILENAME, MIMI_REPO, build_csm_checkpoint, build_mimi_repo
from tests.fakes.hub.content import HubFile, HubRepo
from tests.fakes.hub.server import FakeHub
from tests.fakes.hub.tls import TlsFiles, make_tls_files

__all__ = [
    "GATED_ANONYMOUS",
    "GATED_OUTSIDER",
    "INVALID_TOKEN",
    "MIMI_FILENAME",
    "MIMI_REPO",
    "UNKNOWN_REPO",
    "UNKNOWN_REPO_ANONYMOUS",
    "FakeHub",
    "HubFile",
    "HubRepo",
    "HubRequest",
    "TlsFiles",
    "build_csm_checkpoint",
    "build_mimi_repo",
    "make_tls_files",
]
