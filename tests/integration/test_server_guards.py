"""What a stranger or a slow client can do to a real server (uvicorn with the config `csm-runtime serve` uses, the real
tiny-random generator on CPU), over real sockets on loopback: the token is checked before a byte of the body is
read; incomplete headers and stalled bodies time out (slowloris); HEAD answers on /health and /ready; every refusal is
counted and timed; only accepted speech requests count as activity for the box's watchdog."""

from __future__ import annotations

import re
import socket
import time

import httpx
import pytest

from csm_runtime.server import create_app
from csm_runtime.settings import RuntimeSettings
from tests.fakes.server_fixtures import ServerThread, wait_ready

TOKEN = "guard-test-token-0123456789"
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
PATIENCE_S = 20.0  # how long a test waits for the server to act before calling it "never" (far above both limits)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guard")
    (tmp / "token").write_text(TOKEN)
    settings = RuntimeSettings(model="tiny-random", device="cpu", dtype="float32", cpu_threads=1, max_streams=2,
                               max_audio_ms=160, header_timeout_s=HEADER_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S,
                               token_file=str(tmp / "token"))  # fmt: skip
    with ServerThread(create_app(settings)) as srv:
        srv.client = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        wait_ready(srv.client)
        yield srv
        srv.client.close()


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE_S)
    return sock


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection or goes quiet for PATIENCE_S."""
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data.extend(chunk)
    except TimeoutError:
        pass
    except ConnectionResetError:
        pass
    return bytes(data)


def post_head(path: str, length: int, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
            f"{auth}\r\n").encode()  # fmt: skip


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


# ---- the token before the body -----------------------------------------------------------------------------------
def test_an_unauthenticated_request_gets_401_without_its_body_being_read(server):
    """Headers announce 1000 bytes that never come: the 401 arrives anyway, so nothing waited for the body."""
    with connect(server) as sock:
        sock.sendall(post_head("/v1/audio/speech", 1000))
        sock.settimeout(PATIENCE_S)
        head = b""
        while b"missing bearer token" not in head:  # the body may come in a second segment
            chunk = sock.recv(65536)
            if not chunk:
                break
            head += chunk
    assert head.startswith(b"HTTP/1.1 401 "), head[:200]
    assert b"www-authenticate: Bearer" in head and b"missing bearer token" in head


@pytest.mark.parametrize(
    "body,headers",
    [
        (b"x" * (2 << 20), {}),  # 2 MiB: over the limit, but a stranger hears only 401
        (b"{not json", {"Authorization": "Bearer wrong"}),
        (b'{"model": "tts-1"}', {"Authorization": "Bearer wrong"}),  # invalid, but not the stranger's business
    ],
    ids=["2 MiB body", "bad JSON", "invalid request"],
)
def test_a_stranger_hears_401_whatever_the_body(server, body, headers):
    r = httpx.post(server.url + "/v1/audio/speech", content=body, headers={"content-type": "application/json",
                                                                          **headers})  # fmt: skip
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text


# ---- slow clients --------------------------------------------------------------------------------------------------
def test_connections_trickling_headers_are_closed_after_the_header_timeout(server):
    """Twenty slowloris connections, one header byte every 0.2 s, and one that sends nothing at all: the server
    closes every one, while a normal client is served."""
    socks = [connect(server) for _ in range(21)]
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    closed: set[int] = set()
    deadline = time.monotonic() + PATIENCE_S
    try:
        for sock in socks:
            sock.setblocking(False)
        i = 0
        while len(closed) < len(socks) and time.monotonic() < deadline:
            for n, sock in enumerate(socks[:-1]):  # the last one stays silent
                if n in closed:
                    continue
                try:
                    sock.send(request[i : i + 1])
                    if sock.recv(1) == b"":
                        closed.add(n)
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    closed.add(n)
            try:
                if socks[-1].recv(1) == b"":
                    closed.add(len(socks) - 1)
            except BlockingIOError:
                pass
            i += 1
            time.sleep(0.2)
        assert httpx.get(server.url + "/health").status_code == 200
    finally:
        for sock in socks:
            sock.close()
    assert len(closed) == len(socks), f"{len(socks) - len(closed)} of {len(socks)} still open after {PATIENCE_S} s"


def test_a_body_that_stalls_gets_408_and_the_connection_closes(server):
    with connect(server) as sock:
        sock.sendall(post_head("/v1/audio/speech", 100, TOKEN) + b'{"model": "tts-1",')
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 408 "), response[:200]
    assert b"connection: close" in response.lower() and b"request_timeout" in response


def test_a_stranger_trickling_a_body_after_its_401_is_closed(server):
    with connect(server) as sock:
        sock.sendall(post_head("/v1/audio/speech", 100_000))
        assert sock.recv(65536).startswith(b"HTTP/1.1 401 ")
        sock.settimeout(0.2)
        deadline, closed = time.monotonic() + PATIENCE_S, False
        while not closed and time.monotonic() < deadline:
            try:
                sock.send(b"x")
                closed = sock.recv(1) == b""
            except TimeoutError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
    assert closed


# ---- HEAD, metrics, activity ---------------------------------------------------------------------------------------
def test_head_answers_on_health_and_ready(server):
    r = httpx.head(server.url + "/health")
    assert r.status_code == 200 and r.content == b""
    assert server.client.head("/ready").status_code == 200
    assert httpx.head(server.url + "/ready").status_code == 401


def test_refusals_are_counted_and_every_route_is_timed(server):
    before = server.client.get("/metrics").text
    assert server.client.post("/v1/audio/speech", content=b"x" * (9 << 20)).status_code == 413  # cap: 8 MiB
    assert httpx.post(server.url + "/v1/audio/speech", json={}).status_code == 401
    assert server.client.post("/v1/audio/speech", json={"model": "tts-1"}).status_code == 400
    after = server.client.get("/metrics").text
    route = 'route="/v1/audio/speech"'
    for status in ("413", "401", "400"):
        counted = metric(after, "csm_requests_total", f'{route},status="{status}"')
        assert counted - metric(before, "csm_requests_total", f'{route},status="{status}"') == 1, status
    timed = metric(after, "csm_request_duration_seconds_count", route)
    assert timed - metric(before, "csm_request_duration_seconds_count", route) == 3
    assert metric(after, "csm_request_duration_seconds_count", 'route="/metrics"') >= 1


def test_only_accepted_speech_requests_count_as_activity(server):
    def last() -> float:
        return metric(server.client.get("/metrics").text, "csm_last_request_timestamp_seconds")

    speech = {"model": "tts-1", "voice": "alloy", "input": "Hi.", "response_format": "pcm"}
    assert server.client.post("/v1/audio/speech", json=speech).status_code == 200
    start = last()
    assert start > 0
    refused = [
        httpx.post(server.url + "/v1/audio/speech", json=speech),  # no token
        httpx.post(server.url + "/v1/audio/speech", json=speech, headers={"Authorization": "Bearer wrong"}),
        httpx.post(server.url + "/v1/audio/speech/anything", json=speech),  # no token, unknown path
        server.client.post("/v1/audio/speech/anything", json=speech),  # 404
        server.client.post("/v1/audio/speech", json={**speech, "voice": "nobody"}),  # 400
        server.client.get("/v1/audio/speech"),  # 405
    ]
    assert last() == start, [r.status_code for r in refused]
    assert [r.status_code for r in refused] == [401, 401, 401, 404, 400, 405]
    assert server.client.post("/v1/audio/speech", json=speech).status_code == 200
    assert last() > start
