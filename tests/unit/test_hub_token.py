"""The operator's Hub token as `deploy` finds it (the Hub's own order), and how the box's download shows here."""

from __future__ import annotations

import time

import pytest

from deploy.errors import UsageError
from deploy.provision.hub import describe_download, missing_token_note, needs_hub
from deploy.provision.ready import DownloadClock
from deploy.secrets.hub_token import find_hub_token, login_file


def test_the_hubs_order_file_option_then_variables_then_login_file(tmp_path):
    login = tmp_path / "hf-home" / "token"
    login.parent.mkdir()
    login.write_text("hf_from_login\n")
    named = tmp_path / "named"
    named.write_text("  hf_from_option \n")
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": "hf_from_env", "HUGGING_FACE_HUB_TOKEN": "hf_old_name"}

    found = find_hub_token(named, env)
    assert (found.source, found.value) == (f"--hf-token-file {named}", "hf_from_option")
    assert find_hub_token(None, env).source == "HF_TOKEN"
    assert find_hub_token(None, {**env, "HF_TOKEN": " "}).value == "hf_old_name"
    found = find_hub_token(None, {"HF_HOME": env["HF_HOME"]})
    assert (found.source, found.value) == (f"hf auth login ({login})", "hf_from_login")
    assert find_hub_token(None, {"HF_HOME": str(tmp_path / "empty")}) is None
    assert "hf_from" not in repr(found)  # a debugging repr shows where it came from, never the value


def test_where_hf_auth_login_writes(tmp_path):
    assert login_file({"HF_TOKEN_PATH": "/x/tok"}).as_posix() == "/x/tok"
    assert login_file({"HF_HOME": "/h"}).as_posix() == "/h/token"
    assert login_file({"XDG_CACHE_HOME": "/c"}).as_posix() == "/c/huggingface/token"


def test_a_named_file_that_cannot_be_used_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="cannot read the Hub token file .*nope"):
        find_hub_token(tmp_path / "nope", {"HF_TOKEN": "hf_x"})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UsageError, match="is empty"):
        find_hub_token(tmp_path / "empty", {})


def test_which_models_need_the_hub_and_what_is_said_without_a_token():
    assert not needs_hub("tiny-random") and not needs_hub("csm-1b-random") and needs_hub("sesame/csm-1b")
    assert "sesame/csm-1b is gated" in missing_token_note("sesame/csm-1b")
    assert "fine for a public model" in missing_token_note("acme/open")


def test_download_lines_and_the_deadline_moves_only_while_bytes_grow():
    body = {
        "status": "loading",
        "download": {
            "repo": "sesame/csm-1b",
            "done_bytes": 1_200_000_000,
            "total_bytes": 4_100_000_000,
            "rate_bytes_s": 45_100_000,
        },
    }
    assert describe_download(body) == "downloading sesame/csm-1b on the box: 1.20 GB of 4.10 GB (29%), 45.10 MB/s"
    no_total = {"download": {"repo": "r/m", "done_bytes": 2048, "total_bytes": None, "rate_bytes_s": 0}}
    assert describe_download(no_total) == "downloading r/m on the box: 2.05 kB so far, 0 B/s"
    assert describe_download({"status": "warming"}) is None

    logs: list[str] = []

    class Ctx:
        log = logs.append

    clock = DownloadClock(Ctx(), allowance_s=900.0)
    deadline = time.monotonic() + 10
    assert clock.update(body, deadline) == deadline  # the first sample only sets the mark
    moved = clock.update({"download": {**body["download"], "done_bytes": 1_300_000_000}}, deadline)
    assert moved > deadline + 800  # progress: the deadline counts from now
    assert clock.update({"download": {**body["download"], "done_bytes": 1_300_000_000}}, deadline) == deadline
    assert clock.update({"status": "warming"}, deadline) == deadline
    assert logs and logs[0].startswith("downloading sesame/csm-1b on the box:")
