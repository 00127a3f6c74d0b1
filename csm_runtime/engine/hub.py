"""The Hugging Face Hub as the runtime meets it: the token for a gated checkpoint, one line per refusal, and a cheap
access check before a server starts.

`sesame/csm-1b` is gated: the Hub serves its files only to a token whose account accepted the terms. The token comes
from a file (`hf_token_file`, 0600, written by `deploy` or the operator), never from a setting's value or the command
line; without a file the Hub's own lookup applies (HF_TOKEN, then the file `hf auth login` wrote).

What the Hub answers and which exception each answer becomes (huggingface_hub 0.36, transformers 4.57) is measured
against a local stand-in in tests/integration/test_fake_hub.py. transformers wraps the Hub's error in an OSError
(the Hub's own is its `__cause__`), huggingface_hub alone raises it bare; `explain` looks through both. No torch here.
"""

from __future__ import annotations

import os
from pathlib import Path

HOW_TO_GIVE_A_TOKEN = "set HF_TOKEN, run `hf auth login`, or name a token file with --hf-token-file"
RANDOM_MODELS = ("tiny-random", "csm-1b-random")  # built here, never downloaded (model.py)


class HubAccessError(ValueError):
    """The Hub refused a download (or the token file is unusable); the message is one line saying what to do."""


def read_hub_token(path: str | None) -> str | None:
    """The token in `path` (stripped); None when no file is named. An empty or unreadable file is an error, never
    "no token": a typo in the path must not turn into an anonymous download that fails later for another reason."""
    if not path:
        return None
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise HubAccessError(f"cannot read the Hub token file {path}: {exc.strerror}") from None
    if not token:
        raise HubAccessError(f"the Hub token file {path} is empty")
    return token


def hub_site() -> str:
    """The Hub's address (HF_ENDPOINT when set, huggingface.co otherwise), for the pages a message points to."""
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _status(exc: BaseException) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def explain(exc: BaseException, repo: str, revision: str | None = None) -> str | None:
    """One line for a Hub refusal anywhere in `exc`'s cause chain (None when it is not one): which repository, what
    to do on its page, how to give a token. Gated is checked first: GatedRepoError is a RepositoryNotFoundError."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from requests.exceptions import SSLError

    chain = _chain(exc)
    site = hub_site()
    page = f"{site}/{repo}"

    def first(kind: type) -> BaseException | None:
        return next((e for e in chain if isinstance(e, kind)), None)

    if (gated := first(GatedRepoError)) is not None:
        if _status(gated) == 403:
            return (
                f"{repo} is a gated repository and the Hub token's account has no access to it: request access on "
                f"{page} with that account, or give the token of an account that has it: {HOW_TO_GIVE_A_TOKEN}"
            )
        return (
            f"{repo} is a gated repository and no Hub token was sent: request access on {page}, then give a token "
            f"of that account: {HOW_TO_GIVE_A_TOKEN}"
        )
    if first(RevisionNotFoundError) is not None:
        return f"{repo} has no revision {revision or 'main'!r} on the Hub: name a branch, tag or commit of {page}"
    if first(RepositoryNotFoundError) is not None:
        return (
            f"no model repository {repo!r} on the Hub ({site}), or it is private and the token cannot see it: "
            "check the model id"
        )
    if first(LocalEntryNotFoundError) is not None:
        return None  # offline or unreachable, and not cached (an EntryNotFoundError too): the loader's words say so
    if (entry := first(EntryNotFoundError)) is not None:
        return f"{repo} on the Hub lacks a file the loader needs: {str(entry).strip().splitlines()[-1]}"
    if (http := first(HfHubHTTPError)) is not None and _status(http) == 401:
        return (
            f"the Hub refused the token as invalid or revoked while downloading {repo}: make a new one on "
            f"{site}/settings/tokens and give it: {HOW_TO_GIVE_A_TOKEN}"
        )
    if (tls := first(SSLError)) is not None:
        why = "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in str(tls) else type(tls).__name__
        return f"the Hub at {site} presented a TLS certificate this machine does not trust ({why}) for {repo}"
    return None


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def is_hub_id(model_id: str) -> bool:
    """A Hub repository id rather than a random model or a local folder."""
    return bool(model_id) and model_id not in RANDOM_MODELS and not os.path.exists(os.path.expanduser(model_id))


def check_access(model_id: str, revision: str | None, token: str | None) -> None:
    """Raise HubAccessError (one line) when the Hub refuses `model_id`'s config.json to this token; a HEAD, no body.

    `serve` and `autotune` call this first, so a gated checkpoint is refused at once, not after the server started
    and every autotune candidate failed. A network failure passes: the cache may hold the files, and the load itself
    then says what went wrong."""
    if not is_hub_id(model_id) or offline():
        return
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from requests.exceptions import SSLError

    try:
        get_hf_file_metadata(hf_hub_url(model_id, "config.json", revision=revision), token=token)
    except HFValidationError:
        return  # not a repo id the Hub would accept: the loader reports it
    except (HfHubHTTPError, SSLError) as exc:  # an answer, or a certificate we must not trust: not "no network"
        message = explain(exc, model_id, revision)
        if message is not None:
            raise HubAccessError(message) from None
    except OSError:
        return  # no network (requests' errors are OSErrors): the load decides, perhaps from the cache
