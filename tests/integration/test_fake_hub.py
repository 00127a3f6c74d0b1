"""The Hub stand-in (tests/fakes/hub/) against the real clients: transformers' from_pretrained, huggingface_hub's
hf_hub_download / login, and moshi's Mimi loader, each in its own process with HF_ENDPOINT pointing at the stand-in
and a fresh HF_HOME (huggingface_hub reads both once, at import). These pin what the runtime will see from the real
Hub for a gated checkpoint: which exception, which message, where the token goes, how progress shows on disk.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes.hub import (
    GATED_ANONYMOUS,
    INVALID_TOKEN,
    MIMI_FILENAME,
    MIMI_REPO,
    FakeHub,
    TlsFiles,
    build_csm_checkpoint,
    build_mimi_repo,
    make_tls_files,
)
from tests.fakes.hub_client import MARKER

ROOT = Path(__file__).resolve().parents[2]
GATED, OPEN, MISSING = "acme/csm-gated", "acme/csm-open", "acme/no-such-model"
TOKEN = f"hf_{secrets.token_hex(17)}"  # may read the gated repo
OUTSIDER = f"hf_{secrets.token_hex(17)}"  # a valid token of a user who has not accepted the terms
BOGUS = f"hf_{secrets.token_hex(17)}"  # not a token the Hub knows
DOWNLOAD_CHUNK = 10 * 1024 * 1024  # huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE: what a client writes at a time
GATED_TEXT = "You are trying to access a gated repo."


@dataclass(frozen=True)
class HubContent:
    checkpoint: Path
    mimi: Path
    tls: TlsFiles
    tensor: str  # one weight of the checkpoint, and the sha256 of its bytes
    tensor_sha256: str


@pytest.fixture(scope="session")
def hub_content(tmp_path_factory: pytest.TempPathFactory) -> HubContent:
    from safetensors import safe_open

    root = tmp_path_factory.mktemp("fake-hub")
    checkpoint = build_csm_checkpoint(root / "csm")
    with safe_open(str(checkpoint / "model.safetensors"), framework="np") as f:
        names = list(f.keys())
        tensor = sorted(k for k in names if k.startswith("backbone_model."))[0]
        digest = hashlib.sha256(f.get_tensor(tensor).tobytes()).hexdigest()
    return HubContent(checkpoint, build_mimi_repo(root / "mimi"), make_tls_files(root / "tls"), tensor, digest)


@pytest.fixture
def hub(hub_content: HubContent) -> Iterator[FakeHub]:
    with FakeHub(granted=(TOKEN,), outsiders=(OUTSIDER,), tls=hub_content.tls) as hub:
        hub.add_repo(GATED, hub_content.checkpoint, gated=True)
        hub.add_repo(OPEN, hub_content.checkpoint)
        hub.add_repo(MIMI_REPO, hub_content.mimi)
        yield hub
        assert hub.unknown() == [], "a client used an endpoint the stand-in does not model"


@pytest.fixture
def hf_home(tmp_path: Path) -> Path:
    return tmp_path / "hf-home"


def client_env(hub: FakeHub, hf_home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any Hub settings of its own, pointed at the stand-in and `hf_home`."""
    drop = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(hub.client_env(), HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


def start_client(steps: list[dict], env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.hub_client"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one pipe: a chatty stderr cannot fill up while stdout is read
        text=True,
    )
    proc.stdin.write(json.dumps(steps))
    proc.stdin.close()
    return proc


def finish_client(proc: subprocess.Popen) -> tuple[list[dict], str]:
    """(one result per step, everything the client printed)."""
    out = proc.stdout.read()
    proc.wait(timeout=300)
    lines = [line for line in out.splitlines() if line.startswith(MARKER)]
    if not lines:
        pytest.fail(f"hub client exited {proc.returncode} without a result:\n{out[-4000:]}")
    return json.loads(lines[-1][len(MARKER) :]), out


def run_client(steps: list[dict], env: dict[str, str]) -> tuple[list[dict], str]:
    return finish_client(start_client(steps, env))


def ok(result: dict) -> dict:
    assert "ok" in result, json.dumps(result.get("error"), indent=1)
    return result["ok"]


def error(result: dict) -> dict:
    assert "error" in result, f"expected a failure, got {result}"
    return result["error"]


def assert_token_kept(hub: FakeHub, *texts: str) -> None:
    """No token value in the stand-in's records or state, nor in what the clients printed or raised."""
    seen = repr(hub.requests) + repr(vars(hub)) + "".join(texts)
    for token in (TOKEN, OUTSIDER, BOGUS):
        assert token not in seen


def expected_config(content: HubContent) -> dict:
    cfg = json.loads((content.checkpoint / "config.json").read_text())
    return {k: cfg[k] for k in ("hidden_size", "num_hidden_layers", "text_vocab_size", "num_codebooks")}


def test_gated_checkpoint_loads_with_token_argument(hub: FakeHub, hf_home: Path, hub_content: HubContent) -> None:
    [result], output = run_client(
        [{"do": "load", "repo": GATED, "token": TOKEN, "tensor": hub_content.tensor}], client_env(hub, hf_home)
    )

    loaded = ok(result)
    assert loaded["config"] == expected_config(hub_content)
    assert loaded["tensor_sha256"] == hub_content.tensor_sha256
    assert loaded["commit"] == hub.repos[GATED].commit
    assert loaded["tokenizer_len"] == 260
    fetched = {f.removeprefix(f"{GATED}/") for f in hub.fetched(GATED)}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= fetched
    # The token goes to the Hub, never to the CDN; an anonymous call to the gated repo (transformers' tokenizer
    # lists the repo's files without the token= it was given) is refused, not served.
    cdn = [r for r in hub.requests if r.endpoint == "cdn"]
    assert cdn and all(not r.authorized and r.host.startswith("localhost:") for r in cdn)
    anonymous = [r for r in hub.requests if r.repo == GATED and r.endpoint != "cdn" and not r.authorized]
    assert all(r.status == 401 for r in anonymous)
    assert any(r.endpoint == "resolve" and r.authorized and r.status == 302 for r in hub.requests)
    assert_token_kept(hub, output, json.dumps(result))


def test_gated_checkpoint_refused_without_access(hub: FakeHub, hf_home: Path) -> None:
    steps = [
        {"do": "load", "repo": GATED},
        {"do": "load", "repo": GATED, "token": OUTSIDER},
        {"do": "load", "repo": GATED, "token": BOGUS},
        {"do": "load", "repo": OPEN},
        {"do": "download", "repo": GATED, "filename": "config.json"},
        {"do": "download", "repo": GATED, "filename": "config.json", "token": OUTSIDER},
    ]
    (anonymous, outsider, bogus, open_repo, raw_anonymous, raw_outsider), output = run_client(
        steps, client_env(hub, hf_home)
    )

    err = error(anonymous)
    assert err["type"] == "builtins.OSError" and err["message"].startswith(GATED_TEXT)
    cause = err["causes"][0]
    assert cause["type"] == "huggingface_hub.errors.GatedRepoError" and cause["status"] == 401
    assert cause["message"].startswith("401 Client Error.")
    assert (
        GATED_ANONYMOUS.format(repo=GATED) in cause["message"] and GATED_ANONYMOUS.format(repo=GATED) in err["message"]
    )

    err = error(outsider)
    assert err["type"] == "builtins.OSError" and err["message"].startswith(GATED_TEXT)
    cause = err["causes"][0]
    assert cause["type"] == "huggingface_hub.errors.GatedRepoError" and cause["status"] == 403
    assert "you are not in the authorized list" in cause["message"]

    err = error(bogus)
    assert err["type"] == "builtins.OSError"
    assert err["message"].startswith(f"There was a specific connection error when trying to load {GATED}:")
    assert err["causes"][0]["type"] == "huggingface_hub.errors.HfHubHTTPError" and err["causes"][0]["status"] == 401
    assert INVALID_TOKEN in err["message"]

    ok(open_repo)
    # huggingface_hub alone raises its own type, unwrapped.
    for result, status in ((raw_anonymous, 401), (raw_outsider, 403)):
        err = error(result)
        assert err["type"] == "huggingface_hub.errors.GatedRepoError" and err["status"] == status
    assert hub.fetched(GATED) == []
    assert {r.caller for r in hub.requests if r.repo == GATED} == {"anonymous", "outsider", "invalid"}
    assert_token_kept(hub, output, json.dumps([anonymous, outsider, bogus, raw_anonymous, raw_outsider]))


def test_token_from_hf_token_variable(hub: FakeHub, hf_home: Path, hub_content: HubContent) -> None:
    [result], output = run_client([{"do": "load", "repo": GATED}], client_env(hub, hf_home, HF_TOKEN=TOKEN))

    assert ok(result)["config"] == expected_config(hub_content)
    # With the token in the environment every call carries it, the file listing included.
    assert all(r.authorized for r in hub.requests if r.repo == GATED and r.endpoint != "cdn")
    assert not (hf_home / "token").exists()
    assert_token_kept(hub, output)


def test_token_from_login_file(hub: FakeHub, hf_home: Path, hub_content: HubContent) -> None:
    steps = [{"do": "login", "token": TOKEN}, {"do": "load", "repo": GATED}]
    (login, load), output = run_client(steps, client_env(hub, hf_home))

    assert ok(login)["token_path"] == str(hf_home / "token")
    assert (hf_home / "token").read_text() == TOKEN
    assert ok(load)["config"] == expected_config(hub_content)
    assert [r.caller for r in hub.requests if r.endpoint == "whoami"] == ["granted"]
    assert_token_kept(hub, output)


def test_token_precedence_argument_then_variable_then_file(hub: FakeHub, hf_home: Path) -> None:
    hf_home.mkdir(parents=True)
    (hf_home / "token").write_text(TOKEN)
    steps = [{"do": "load", "repo": GATED}, {"do": "load", "repo": GATED, "token": TOKEN}]
    (env_wins, argument_wins), output = run_client(steps, client_env(hub, hf_home, HF_TOKEN=OUTSIDER))

    assert error(env_wins)["causes"][0]["status"] == 403  # HF_TOKEN (an outsider's) beats the token file
    ok(argument_wins)  # token= beats HF_TOKEN
    assert_token_kept(hub, output)


def test_warm_cache_still_needs_the_token_unless_offline(hub: FakeHub, hf_home: Path) -> None:
    """A download that fails on access falls back to the cache, but the tokenizer's chat-template listing does not:
    without a token a warm cache still fails (a bare GatedRepoError), an unknown token does not, and offline mode
    loads from the cache without asking the Hub anything."""
    steps = [
        {"do": "load", "repo": GATED, "token": TOKEN},
        {"do": "load", "repo": GATED},
        {"do": "load", "repo": GATED, "token": BOGUS},
    ]
    (first, anonymous, bogus), output = run_client(steps, client_env(hub, hf_home))

    ok(first)
    err = error(anonymous)
    assert err["type"] == "huggingface_hub.errors.GatedRepoError" and err["status"] == 401
    assert f"/api/models/{GATED}/tree/main/additional_chat_templates" in err["message"]
    ok(bogus)
    asked = len(hub.requests)

    [offline], offline_output = run_client(
        [{"do": "load", "repo": GATED}], client_env(hub, hf_home, HF_HUB_OFFLINE="1")
    )
    ok(offline)
    assert len(hub.requests) == asked
    assert_token_kept(hub, output, offline_output)


def test_missing_repo_revision_and_file(hub: FakeHub, hf_home: Path) -> None:
    open_commit = hub.repos[OPEN].commit
    steps = [
        {"do": "load", "repo": MISSING},
        {"do": "load", "repo": MISSING, "token": TOKEN},
        {"do": "load", "repo": GATED, "token": TOKEN, "revision": "no-such-branch"},
        {"do": "download", "repo": GATED, "filename": "no-such-file.bin", "token": TOKEN},
        {"do": "load", "repo": OPEN, "revision": open_commit},
        {"do": "download", "repo": MISSING, "filename": "config.json", "token": TOKEN},
        {"do": "download", "repo": GATED, "filename": "config.json", "token": TOKEN, "revision": "no-such-branch"},
    ]
    results, output = run_client(steps, client_env(hub, hf_home))
    anonymous, with_token, revision, entry, by_commit, raw_repo, raw_revision = results

    for result, status in ((anonymous, 401), (with_token, 404)):
        err = error(result)
        assert err["type"] == "builtins.OSError"
        assert err["message"].startswith(f"{MISSING} is not a local folder and is not a valid model identifier")
        assert err["causes"][0]["type"] == "huggingface_hub.errors.RepositoryNotFoundError"
        assert err["causes"][0]["status"] == status

    err = error(revision)
    assert err["type"] == "builtins.OSError"
    assert err["message"].startswith(
        "no-such-branch is not a valid git identifier (branch name, tag name or commit id)"
    )
    assert err["causes"][0]["type"] == "huggingface_hub.errors.RevisionNotFoundError"

    err = error(entry)
    assert err["type"] == "huggingface_hub.errors.EntryNotFoundError" and err["status"] == 404

    assert error(raw_repo)["type"] == "huggingface_hub.errors.RepositoryNotFoundError"
    assert error(raw_revision)["type"] == "huggingface_hub.errors.RevisionNotFoundError"

    assert ok(by_commit)["commit"] == open_commit
    assert any(f"/resolve/{open_commit}/" in r.path for r in hub.requests)
    assert_token_kept(hub, output)


def test_mimi_weights_download_and_load(hub: FakeHub, hf_home: Path, hub_content: HubContent) -> None:
    steps = [
        {"do": "mimi", "token": BOGUS},
        {"do": "mimi", "token": TOKEN},
        {"do": "download", "repo": MIMI_REPO, "filename": MIMI_FILENAME},  # what csm_runtime asks: no token
    ]
    (bogus, with_token, anonymous), output = run_client(steps, client_env(hub, hf_home))

    # A token the Hub does not know fails even on Kyutai's public repo, unwrapped (moshi adds nothing).
    err = error(bogus)
    assert err["type"] == "huggingface_hub.errors.HfHubHTTPError" and err["status"] == 401
    assert INVALID_TOKEN in err["message"]

    first = ok(with_token)
    assert first["path"].endswith(f"/{MIMI_FILENAME}") and first["codebooks"] == 32
    assert first["params"] > 70_000_000  # the full-size Mimi, loaded strictly from the served file
    assert ok(anonymous)["path"] == first["path"]  # Kyutai's repo is public: the cached copy, no second download
    assert hub.fetched(MIMI_REPO) == [f"{MIMI_REPO}/{MIMI_FILENAME}"]
    heads = [r for r in hub.requests if r.repo == MIMI_REPO and r.endpoint == "resolve"]
    assert [(r.caller, r.status) for r in heads] == [("invalid", 401), ("granted", 302), ("anonymous", 302)]
    assert all(not r.authorized for r in hub.requests if r.endpoint == "cdn")
    assert_token_kept(hub, output, json.dumps(bogus))


def test_download_progress_shows_in_the_cache(hub: FakeHub, hf_home: Path, hub_content: HubContent) -> None:
    """Another process sees a download's bytes so far as the size of `blobs/<sha256>.incomplete`; the total is the
    HEAD answer's X-Linked-Size (an LFS file) before the first byte arrives."""
    total = (hub_content.mimi / MIMI_FILENAME).stat().st_size
    head = _head(hub, f"/{MIMI_REPO}/resolve/main/{MIMI_FILENAME}")
    assert head.status == 302 and int(head.getheader("X-Linked-Size")) == total
    cache = hf_home / "hub" / f"models--{MIMI_REPO.replace('/', '--')}"
    blob = cache / "blobs" / hub.repos[MIMI_REPO].files[MIMI_FILENAME].sha256
    partial = Path(f"{blob}.incomplete")
    assert head.getheader("X-Linked-Etag") == f'"{blob.name}"'

    hub.hold_downloads(at_byte=2 * DOWNLOAD_CHUNK + 123)
    proc = start_client([{"do": "download", "repo": MIMI_REPO, "filename": MIMI_FILENAME}], client_env(hub, hf_home))
    try:
        assert hub.held.wait(120), "the download never reached the hold offset"
        assert wait_for(lambda: partial.exists() and partial.stat().st_size >= 2 * DOWNLOAD_CHUNK)
        assert partial.stat().st_size == 2 * DOWNLOAD_CHUNK  # whole chunks only, and not the whole file
        assert not blob.exists()
    finally:
        hub.release_downloads()
    [result], output = finish_client(proc)

    assert ok(result)["size"] == total
    assert blob.stat().st_size == total and not Path(f"{blob}.incomplete").exists()
    cdn = [r for r in hub.requests if r.endpoint == "cdn"]
    assert [(r.status, r.sent) for r in cdn] == [(200, total)]


def test_stand_in_keeps_no_token(hub: FakeHub, hf_home: Path, capfd: pytest.CaptureFixture[str]) -> None:
    steps = [
        {"do": "download", "repo": GATED, "filename": "config.json", "token": BOGUS},
        {"do": "download", "repo": GATED, "filename": "config.json", "token": TOKEN},
    ]
    (bad, good), output = run_client(steps, client_env(hub, hf_home))

    assert error(bad)["status"] == 401
    ok(good)
    assert [r.caller for r in hub.requests if r.endpoint == "resolve"] == ["invalid", "granted", "granted"]
    captured = capfd.readouterr()
    assert_token_kept(hub, output, captured.out, captured.err)


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _head(hub: FakeHub, path: str) -> http.client.HTTPResponse:
    ctx = ssl.create_default_context(cafile=str(hub.tls.cert))
    conn = http.client.HTTPSConnection("127.0.0.1", hub.port, context=ctx, timeout=30)
    conn.request("HEAD", path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp
