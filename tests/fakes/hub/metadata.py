"""The metadata endpoints: model_info (public, gated repos included) and the repo tree (gated like a download)."""

from __future__ import annotations

from tests.fakes.hub.answers import UNKNOWN_ENTRY, Response, error, json_answer
from tests.fakes.hub.content import HubRepo, git_sha1


def model_info(repo: HubRepo, commit: str) -> Response:
    repo_id = repo.repo_id
    return json_answer(
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


def tree(repo: HubRepo, commit: str, folder: str, query: dict[str, list[str]]) -> Response:
    """list_repo_tree's page: the entries below `folder`, one level or (`recursive=true`) all, folders included."""
    recursive = query.get("recursive", ["false"])[0].lower() == "true"
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    below = [f for p, f in repo.files.items() if p.startswith(prefix)]
    if prefix and not below:
        return error(404, UNKNOWN_ENTRY, "EntryNotFound", **{"X-Repo-Commit": commit})
    entries: dict[str, dict] = {}
    for f in below:
        rest = f.path[len(prefix) :]
        if "/" in rest:  # a folder on the way down
            parts = rest.split("/")[:-1]
            steps = range(1, len(parts) + 1) if recursive else range(1, 2)
            for n in steps:
                sub = prefix + "/".join(parts[:n])
                entries.setdefault(sub, {"type": "directory", "oid": git_sha1(sub.encode()), "size": 0, "path": sub})
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
    return json_answer(sorted(entries.values(), key=lambda e: e["path"]))
