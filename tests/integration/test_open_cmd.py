"""`deploy open ID`: the console script prints the playground URL with the token in its fragment; a tunnelled rental
(the loopback sshd with a real tiny-random server on the box's loopback) keeps the tunnel open until SIGINT and the
page and API answer through it; a browser is given a 0600 redirect file, never the token on its command line; no
browser is no failure; bad IDs are one line."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from urllib.parse import unquote

import httpx
import pytest

from deploy.commands.open import page_url
from deploy.ledger import Ledger
from deploy.settings import load_settings
from tests.conftest import DEPLOY_BIN
from tests.fakes.ssh_rental import start_ssh_rental, stop_group


def _env(deploy_home, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY")}
    return {**env, "DEPLOY_HOME": str(deploy_home), **extra}


def _run(env, *args):
    return subprocess.run([str(DEPLOY_BIN), *args], env=env, capture_output=True, text=True, timeout=60)


def _direct_rental(tmp_path) -> tuple[int, str]:
    token = "direct-rental-token-0123456789"
    (tmp_path / "tokens").mkdir(mode=0o700)
    token_file = tmp_path / "tokens" / "rental-x.token"
    token_file.write_text(token + "\n")
    with Ledger(load_settings().ledger_path) as ledger:
        rental = ledger.record_intent(attempt_id="t", provider="vast", label_prefix="csm-deploy")
        ledger.record_rented(rental.id, "7000001")
        ledger.update_meta(
            rental.id, endpoint="http://203.0.113.7:41000", access="direct", port=8000, token_file=str(token_file)
        )
    return rental.id, token


def test_page_url_keeps_the_token_in_the_fragment():
    assert page_url("http://h:1/", "a/b+c=") == "http://h:1/#token=a%2Fb%2Bc%3D"


def test_tunnelled_rental_serves_the_page_until_sigint(sshd, tmp_path, deploy_home):
    server = start_ssh_rental(sshd, tmp_path)
    try:
        proc = subprocess.Popen(
            [str(DEPLOY_BIN), "open", str(server.id), "--no-browser"],
            env=_env(deploy_home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = proc.stdout.readline()
            assert line.startswith("page: "), (line, proc.stderr.read() if proc.poll() is not None else "")
            url = line.split()[-1]
            base, _, fragment = url.partition("/#token=")
            token = server.token_file.read_text().strip()
            assert unquote(fragment) == token and base.startswith("http://127.0.0.1:")
            page = httpx.get(base + "/", timeout=10)
            assert page.status_code == 200 and "playground" in page.text
            voices = httpx.get(base + "/v1/voices", headers={"Authorization": f"Bearer {token}"}, timeout=30)
            assert voices.status_code == 200 and voices.json()["voices"]
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert "tunnel closed" in err and token not in err
        with pytest.raises(httpx.HTTPError):
            httpx.get(base + "/health", timeout=3)
    finally:
        stop_group(server.pid)


def test_a_browser_gets_a_private_redirect_file_not_the_token(tmp_path, deploy_home):
    rid, token = _direct_rental(tmp_path)
    seen = tmp_path / "browser-argv"
    fake = tmp_path / "fake-browser"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {seen}\n')
    fake.chmod(0o755)
    res = _run(_env(deploy_home, BROWSER=str(fake)), "open", str(rid), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info == {"url": page_url("http://203.0.113.7:41000", token), "access": "direct", "browser": True}
    argv = seen.read_text()
    assert token not in argv and argv.startswith("file://")
    redirect = tmp_path / "tokens" / "rental-x.open.html"
    assert argv.strip() == redirect.resolve().as_uri()
    assert stat.S_IMODE(redirect.stat().st_mode) == 0o600 and info["url"] in redirect.read_text()


def test_no_browser_is_not_a_failure_and_bad_ids_are_one_line(tmp_path, deploy_home):
    rid, token = _direct_rental(tmp_path)
    env = _env(deploy_home)
    res = _run(env, "open", str(rid))
    assert res.returncode == 0 and res.stdout.strip() == f"page: {page_url('http://203.0.113.7:41000', token)}"
    assert "no browser on this machine" in res.stderr and token not in res.stderr
    assert not (tmp_path / "tokens" / "rental-x.open.html").exists()
    for bad, message in (("999", "no rental 999"), ("abc", "Invalid value")):
        res = _run(env, "open", bad)
        lines = res.stderr.strip().splitlines()
        assert res.returncode != 0 and len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
