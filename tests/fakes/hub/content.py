"""What the stand-in serves: repos at one commit, and their files with the digests the Hub names them by."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".model", ".msgpack", ".h5", ".onnx")
LFS_MIN_SIZE = 10 * MIB  # the Hub refuses plain git files above 10 MiB


@functools.lru_cache(maxsize=256)
def _digests(path: str, mtime_ns: int, size: int) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file; cached by (path, mtime, size) so a 385 MB file is hashed once a session."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(8 * MIB):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def git_sha1(data: bytes) -> str:
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
        return git_sha1(pointer.encode())


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]
    gated: bool
    commit: str
    branches: dict[str, str]

    @classmethod
    def from_folder(cls, repo_id: str, folder: Path, *, gated: bool, branches: tuple[str, ...]) -> HubRepo:
        """Every file under `folder` at one commit (named after the repo and its files), on `main` and `branches`."""
        files = {
            p.relative_to(folder).as_posix(): HubFile.from_disk(p.relative_to(folder).as_posix(), p)
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        tree = "\n".join(f"{f.path} {f.etag}" for f in files.values())
        commit = hashlib.sha1(f"{repo_id}\n{tree}".encode()).hexdigest()
        return cls(repo_id, files, gated, commit, {b: commit for b in ("main", *branches)})

    def resolve(self, revision: str) -> str | None:
        """The commit a branch name or a full commit sha stands for; None when neither."""
        if revision in self.branches:
            return self.branches[revision]
        return self.commit if revision == self.commit else None
