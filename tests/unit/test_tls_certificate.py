"""The server's self-signed certificate (csm_runtime/server/tls.py) and its pin on the control plane
(deploy/remote/tls.py): what it covers, where its key lives, when it is made again, and that both sides compute
the same fingerprint as openssl."""

from __future__ import annotations

import ssl
import stat
import subprocess

import pytest

from csm_runtime.server.tls import (
    TlsError,
    covered_names,
    ensure_self_signed,
    fingerprint,
    machine_names,
    make_self_signed,
    resolve_tls,
)
from deploy.remote.tls import pem_fingerprint, with_scheme

NAMES = ("127.0.0.1", "::1", "localhost", "203.0.113.7")


def test_self_signed_covers_the_names_and_keeps_its_key_private(tmp_path):
    files = make_self_signed(tmp_path / "tls", NAMES)
    covered, expires = covered_names(files.cert.read_bytes())
    assert covered == set(NAMES)
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    assert b"PRIVATE KEY" not in files.cert.read_bytes()
    # the same fingerprint here, on the control plane and in openssl's own words
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(files.cert)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = out.strip().split("=", 1)[1].replace(":", "").lower()
    assert fingerprint(files.cert.read_bytes()) == pem_fingerprint(files.cert.read_bytes()) == expected
    # a client that trusts only this file accepts it as an anchor (strict X.509 checks, as Python 3.13 does)
    ctx = ssl.create_default_context(cafile=str(files.cert))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    assert ctx.get_ca_certs()[0]["subject"]


def test_a_certificate_is_reused_while_it_covers_the_names_and_made_again_when_not(tmp_path):
    first = ensure_self_signed(tmp_path, NAMES).sha256
    again = ensure_self_signed(tmp_path, NAMES[:2])  # fewer names: still covered, same certificate (pins survive)
    assert again.sha256 == first
    other = ensure_self_signed(tmp_path, (*NAMES, "198.51.100.9"))  # an address it does not cover: a new one
    assert other.sha256 != first and "198.51.100.9" in covered_names(other.cert.read_bytes())[0]


def test_which_certificate_a_bind_serves(tmp_path):
    given = make_self_signed(tmp_path / "own", ("127.0.0.1",))
    args = {"tls_dir": str(tmp_path / "auto"), "san": ("203.0.113.7",)}
    assert resolve_tls("127.0.0.1", public=False, certfile=None, keyfile=None, **args) is None  # loopback: plain
    auto = resolve_tls("0.0.0.0", public=True, certfile=None, keyfile=None, **args)
    assert auto.self_signed and "203.0.113.7" in auto.names and "127.0.0.1" in auto.names
    own = resolve_tls("0.0.0.0", public=True, certfile=str(given.cert), keyfile=str(given.key), **args)
    assert not own.self_signed and own.cert == given.cert
    with pytest.raises(TlsError, match="go together"):
        resolve_tls("0.0.0.0", public=True, certfile=str(given.cert), keyfile=None, **args)
    with pytest.raises(TlsError, match="cannot read the TLS key"):
        resolve_tls("0.0.0.0", public=True, certfile=str(given.cert), keyfile=str(tmp_path / "nope"), **args)


def test_machine_names_include_loopback_the_bind_and_extra():
    names = machine_names("10.1.2.3", ("203.0.113.7", " "))
    assert names[:3] == ("127.0.0.1", "::1", "localhost")
    assert "10.1.2.3" in names and "203.0.113.7" in names and "" not in names
    assert "0.0.0.0" not in machine_names("0.0.0.0")


def test_urls_change_scheme_only():
    assert with_scheme("http://10.0.0.2:8000/v1", True) == "https://10.0.0.2:8000/v1"
    assert with_scheme("https://[::1]:8000", False) == "http://[::1]:8000"
