"""deploy/remote/ (host.py, local_host.py) against the real loopback sshd (Fabric) and this machine (LocalHost)."""

from __future__ import annotations

import subprocess
import time
import urllib.request

import paramiko
import pytest

from deploy.errors import HostKeyMismatchError, RemoteError
from deploy.remote.host import RemoteHost, fingerprint, wait_for_ssh
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
    _assert_refused_for_its_key(sshd, key, other)


def _assert_refused_for_its_key(sshd, login_key, pin: str) -> None:
    """A pin that is not the box's key: refused on the first try (no retries, nothing re-pinned), with the key the
    box really presented seen and named, and it is not the pinned one."""
    made, repinned = [], []

    def make():
        made.append(RemoteHost(sshd.host, sshd.port, sshd.user, login_key, pinned_key=pin, on_new_key=repinned.append))
        return made[-1]

    with pytest.raises(HostKeyMismatchError) as err:
        wait_for_ssh(make, deadline=time.monotonic() + 30, what="box", poll_s=0.1)
    (bad,) = made
    assert bad.seen_key == sshd.host_key_pub != pin and repinned == []
    assert f"presented host key {sshd.host_key_pub.split()[0]} {fingerprint(sshd.host_key_pub)}, " in str(err.value)
    assert f"but the ledger pins {pin.split()[0]} {fingerprint(pin)} for it" in str(err.value)
    assert fingerprint(sshd.host_key_pub) != fingerprint(pin)


def keygen_pub_other(key) -> str:
    other = key.parent / "other"
    if not other.exists():
        keygen(other)
    return (other.parent / "other.pub").read_text().split()[1]


def test_a_key_of_another_type_pinned_is_a_mismatch_too(sshd, key, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(tmp_path / "rsa")], check=True)
    rsa = " ".join((tmp_path / "rsa.pub").read_text().split()[:2])
    _assert_refused_for_its_key(sshd, key, rsa)


def test_the_host_key_is_checked_before_the_login(sshd, key, tmp_path):
    """A wrong pin is refused even with a login key the box does not accept, and the right pin with that login key
    is an authentication error, never a host-key one: the two failures cannot be taken for each other."""
    stranger = tmp_path / "stranger"
    keygen(stranger)  # never authorized on the box
    _assert_refused_for_its_key(sshd, stranger, "ssh-ed25519 " + keygen_pub_other(key))

    right_pin = RemoteHost(sshd.host, sshd.port, sshd.user, stranger, pinned_key=sshd.host_key_pub)
    with pytest.raises(paramiko.AuthenticationException):
        right_pin.open()
    assert right_pin.seen_key == sshd.host_key_pub  # the key was checked, and it matched
    right_pin.close()
    with pytest.raises(RemoteError) as err:
        wait_for_ssh(
            lambda: RemoteHost(sshd.host, sshd.port, sshd.user, stranger, pinned_key=sshd.host_key_pub),
            deadline=time.monotonic() + 1,
            what="box",
            poll_s=0.2,
        )
    assert not isinstance(err.value, HostKeyMismatchError)
    assert "did not answer before the deadline" in str(err.value) and "AuthenticationException" in str(err.value)


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
