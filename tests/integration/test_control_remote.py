"""deploy/remote.py against the real loopback sshd (Fabric) and this machine (LocalHost)."""

from __future__ import annotations

import time
import urllib.request

import pytest

from deploy.errors import HostKeyMismatchError, RemoteError
from deploy.remote.host import RemoteHost, wait_for_ssh
from deploy.remote.local_host import LocalHost
from tests.fakes.http_once import serve_once
from tests.fakes.sshd import keygen


@pytest.fixture(scope="module")
def key(sshd, tmp_path_factory):
    path = tmp_path_factory.mktemp("key") / "id"
    with open(sshd.authorized_keys, "a") as f:
        f.write(keygen(path) + "\n")
    return path


def test_tofu_pins_then_mismatch_is_refused(sshd, key):
    pinned: list[str] = []
    host = wait_for_ssh(
        lambda: RemoteHost(sshd.host, sshd.port, sshd.user, key, on_new_key=pinned.append),
        deadline=time.monotonic() + 10,
        what="box",
    )
    host.close()
    assert pinned == [sshd.host_key_pub]
    ok = RemoteHost(sshd.host, sshd.port, sshd.user, key, pinned_key=pinned[0])
    assert ok.run("echo pinned", stream=False).stdout.strip() == "pinned"
    ok.close()
    other = "ssh-ed25519 " + keygen_pub_other(key)
    bad = RemoteHost(sshd.host, sshd.port, sshd.user, key, pinned_key=other)
    with pytest.raises(HostKeyMismatchError):
        wait_for_ssh(lambda: bad, deadline=time.monotonic() + 5, what="box")


def keygen_pub_other(key) -> str:
    other = key.parent / "other"
    if not other.exists():
        keygen(other)
    return (other.parent / "other.pub").read_text().split()[1]


def test_run_put_detached_forward(sshd, key, tmp_path):
    host = RemoteHost(sshd.host, sshd.port, sshd.user, key)
    res = host.run("echo out; echo err >&2; exit 3", stream=False, check=False)
    assert (res.exit_code, res.stdout.strip(), res.stderr.strip()) == (3, "out", "err")
    with pytest.raises(RemoteError, match="exited 3"):
        host.run("exit 3", stream=False)
    with pytest.raises(RemoteError, match="did not finish within 1 s"):
        host.run("sleep 10", timeout=1, stream=False)
    src = tmp_path / "blob"
    src.write_bytes(bytes(range(256)) * 1000)
    dest = tmp_path / "remote" / "blob"
    digest = host.put(src, str(dest))
    assert dest.read_bytes() == src.read_bytes() and len(digest) == 64
    port, stop = serve_once(b"through-the-tunnel")
    try:
        with host.forward_port(port) as local_port:
            assert urllib.request.urlopen(f"http://127.0.0.1:{local_port}/", timeout=5).read() == b"through-the-tunnel"
    finally:
        stop()
    pid = host.start_detached("echo started; sleep 30", name="t")
    time.sleep(0.5)
    assert "started" in host.read_text(".csm-deploy-run/t.log")
    host.run(f"kill {pid}", stream=False)
    host.close()


def test_ssh_wait_gives_up_at_deadline(key):
    from tests.fakes.vast_emulator import closed_port

    port = closed_port()
    with pytest.raises(RemoteError, match="did not answer before the deadline"):
        wait_for_ssh(
            lambda: RemoteHost("127.0.0.1", port, "root", key, connect_timeout=1),
            deadline=time.monotonic() + 1,
            what="box",
            poll_s=0.2,
        )


def test_local_host_same_methods(tmp_path):
    host = LocalHost(tmp_path / "box")
    assert host.run("pwd", stream=False).stdout.strip() == str(tmp_path / "box")
    src = tmp_path / "f"
    src.write_text("x")
    host.put(src, "~/sub/f")
    assert (tmp_path / "box" / "sub" / "f").read_text() == "x"
    pid = host.start_detached("echo hi; sleep 30", name="svc")
    time.sleep(0.3)
    assert host.read_text("~/.csm-deploy-run/svc.log").strip() == "hi"
    assert host.stop_all() == [pid]
    with pytest.raises(RemoteError, match="did not finish"):
        host.run("sleep 5", timeout=0.5, stream=False)
    with host.forward_port(1234) as port:
        assert port == 1234
