"""The playground page in a real browser: Debian's chromium, headless, driven by Playwright (its own browser
download cannot work here). The page loads from the real server (tiny-random on CPU), takes the token from the URL
fragment, lists the voices, streams `pcm` on Speak and schedules it through Web Audio, shows TTFA, RTF and the
duration, offers the WAV; a wrong token shows the server's 401. The same page works through the HAProxy gateway and
over TLS. The page's counters (`window.playground`) say what it received and scheduled. The browser applies the
page's own Content-Security-Policy, as a user's does (no bypass)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from csm_runtime.server import create_app
from csm_runtime.settings import RuntimeSettings
from tests.conftest import require_binary
from tests.fakes.server_fixtures import ServerThread, free_port, wait_ready

CHROMIUM = "/usr/bin/chromium"
TOKEN = "browser-test-token-0123456789"
MAX_AUDIO_MS = 640  # 8 frames: the page must schedule exactly 8 * 1920 samples
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


def settings(tmp_path) -> RuntimeSettings:
    (tmp_path / "token").write_text(TOKEN)
    return RuntimeSettings(
        model="tiny-random",
        device="cpu",
        dtype="float32",
        cpu_threads=1,
        max_streams=2,
        max_audio_ms=MAX_AUDIO_MS,
        token_file=str(tmp_path / "token"),
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerThread]:
    with ServerThread(create_app(settings(tmp_path_factory.mktemp("page")))) as srv:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
            wait_ready(client)
        yield srv


@pytest.fixture(scope="module")
def browser():
    require_binary(CHROMIUM, "chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()


def new_page(browser, **context):
    """A page in a fresh context, under the page's own Content-Security-Policy as a user's browser applies it: a
    policy that blocked the page's own scripts or requests fails these tests."""
    return browser.new_context(**context).new_page()


def wait_until(page, expression: str, timeout_s: float) -> None:
    """Poll `expression` from here. Playwright's wait_for_function evaluates its string with `eval` inside the page,
    which the page's policy (no 'unsafe-eval') forbids; `page.evaluate` goes through the DevTools protocol."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, (
            f"{expression} still false after {timeout_s} s: {page.evaluate('window.playground')}"
        )
        page.wait_for_timeout(50)


def speak_on_page(browser, url: str, token: str, **context) -> dict:
    """Open the page with the token in the fragment, press Speak, wait for the end; the page's counters."""
    page = new_page(browser, **context)
    page.goto(f"{url}/#token={token}")
    wait_until(page, "window.playground && window.playground.status === 'idle'", 60)
    assert "#token" not in page.url  # the token left the address bar
    assert page.locator("#voice option").count() >= 6
    page.fill("#text", "Hello from the browser. This is the second sentence.")
    page.click("#speak")
    wait_until(page, "['done', 'error'].includes(window.playground.status)", 120)
    state = page.evaluate("window.playground")
    state["shown"] = {k: page.text_content(f"#{k}") for k in ("ttfa", "rtf", "duration")}
    state["download"] = page.get_attribute("#download", "href") if page.is_visible("#download") else None
    page.context.close()
    return state


def assert_spoke(state: dict) -> None:
    assert state["status"] == "done" and state["error"] in (None, ""), state
    assert state["samplesScheduled"] == MAX_AUDIO_MS // 80 * 1920 and state["chunks"] >= 1
    assert state["ttfaMs"] > 0 and state["shown"]["ttfa"].endswith(" ms")
    assert state["shown"]["duration"] == "0.64 s" and float(state["shown"]["rtf"]) > 0
    assert state["download"].startswith("blob:")


def test_speak_streams_and_schedules_audio_and_shows_ttfa(server, browser):
    assert_spoke(speak_on_page(browser, server.url, TOKEN))


def test_a_wrong_token_shows_the_401_as_a_message(server, browser):
    page = new_page(browser)
    page.goto(f"{server.url}/#token=not-the-token")
    wait_until(page, "window.playground && window.playground.status === 'error'", 60)
    message = page.text_content("#error")
    assert "401" in message and "invalid bearer token" in message and page.is_visible("#error")
    page.fill("#token", TOKEN)  # the right one in the field: voices load, Speak works
    page.dispatch_event("#token", "change")
    wait_until(page, "window.playground.status === 'idle'", 60)
    assert not page.is_visible("#error")
    page.context.close()


@pytest.mark.usefixtures("haproxy")
def test_the_page_works_through_the_gateway(server, browser, tmp_path):
    from deploy.gateway.config import Backend
    from tests.fakes.gateway import one_replica_gateway

    client_token = "gateway-client-token-0123"
    backend = Backend("r1", f"127.0.0.1:{server.port}", TOKEN)
    with one_replica_gateway(tmp_path, "page", backend, client_token) as gateway:
        url = gateway.url
        assert httpx.get(url + "/").status_code == 200 and httpx.get(url + "/v1/voices").status_code == 401
        assert_spoke(speak_on_page(browser, url, client_token))


@contextmanager
def tls_server(tmp_path) -> Iterator[str]:
    from csm_runtime.server.tls import make_self_signed

    cert = make_self_signed(tmp_path / "tls", ("127.0.0.1",))
    port = free_port()
    config = uvicorn.Config(
        create_app(settings(tmp_path)),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        ssl_certfile=str(cert.cert),
        ssl_keyfile=str(cert.key),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, verify=False, timeout=60) as c:
            deadline = time.monotonic() + 60
            while not server.started:
                assert time.monotonic() < deadline and thread.is_alive()
                time.sleep(0.05)
            wait_ready(c)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def test_the_page_works_over_tls(browser, tmp_path):
    with tls_server(tmp_path) as url:
        assert_spoke(speak_on_page(browser, url, TOKEN, ignore_https_errors=True))


def test_a_policy_that_blocks_the_pages_own_requests_fails_here(server, browser, monkeypatch):
    """These tests run under the page's policy: with `connect-src 'none'` the page cannot reach its own API, and
    it says so instead of listing voices."""
    from csm_runtime.server.routers import page as page_router

    policy = page_router.HEADERS["Content-Security-Policy"]
    monkeypatch.setitem(page_router.HEADERS, "Content-Security-Policy", policy.replace("'self'; img", "'none'; img"))
    assert "connect-src 'none'" in page_router.HEADERS["Content-Security-Policy"]
    page = new_page(browser)
    page.goto(f"{server.url}/#token={TOKEN}")
    wait_until(page, "window.playground && window.playground.status === 'error'", 30)
    assert page.locator("#voice option").count() == 0 and page.text_content("#error")
    page.context.close()
