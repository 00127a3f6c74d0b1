"""Who is asking and what they may read: tokens kept as sha256 digests, gated repos, and the Hub's refusals."""

from __future__ import annotations

import hashlib

from tests.fakes.hub.answers import (
    GATED_ANONYMOUS,
    GATED_OUTSIDER,
    INVALID_TOKEN,
    UNKNOWN_REPO,
    UNKNOWN_REPO_ANONYMOUS,
    UNKNOWN_REVISION,
    Response,
    error,
    json_answer,
)
from tests.fakes.hub.content import HubRepo


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Gate:
    """`granted` tokens may read gated repos; `outsiders` are valid tokens of users without access."""

    def __init__(self, granted: tuple[str, ...], outsiders: tuple[str, ...]) -> None:
        self._granted = frozenset(token_digest(t) for t in granted)
        self._outsiders = frozenset(token_digest(t) for t in outsiders)

    def caller(self, authorization: str | None) -> str:
        """anonymous | granted | outsider | invalid, from the Authorization header (its value is not kept)."""
        if not authorization:
            return "anonymous"
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return "invalid"
        digest = token_digest(value.strip())
        if digest in self._granted:
            return "granted"
        return "outsider" if digest in self._outsiders else "invalid"


def locate(
    caller: str, repos: dict[str, HubRepo], repo_id: str, revision: str, *, site: str, metadata: bool = False
) -> tuple[HubRepo, str] | Response:
    """The repo and the commit `revision` names, or the refusal the Hub gives this caller (repo first, then
    revision). Metadata (model_info) of gated repos is public."""
    if caller == "invalid":
        return error(401, INVALID_TOKEN)
    repo = repos.get(repo_id)
    if repo is None:
        if caller == "anonymous":
            return error(401, UNKNOWN_REPO_ANONYMOUS)
        return error(404, UNKNOWN_REPO, "RepoNotFound")
    if repo.gated and not metadata and caller != "granted":
        if caller == "anonymous":
            return error(401, GATED_ANONYMOUS.format(repo=repo_id), "GatedRepo")
        return error(403, GATED_OUTSIDER.format(repo=repo_id, site=site), "GatedRepo")
    commit = repo.resolve(revision)
    if commit is None:
        return error(404, UNKNOWN_REVISION.format(revision=revision), "RevisionNotFound")
    return repo, commit


def whoami(caller: str) -> Response:
    """What `huggingface_hub.login()` checks before it writes the token file."""
    if caller not in ("granted", "outsider"):
        return error(401, INVALID_TOKEN)
    token = {"displayName": "csm-deploy-test", "role": "read"}
    return json_answer({"type": "user", "name": caller, "auth": {"type": "access_token", "accessToken": token}})
