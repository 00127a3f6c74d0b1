"""The certificate a rental's server presents, pinned in the ledger the way its SSH host key is.

A server bound to a public address serves HTTPS only, with a certificate the runtime made for itself
(csm_runtime/server/tls.py). `deploy` fetches that file over SSH (whose host key is pinned, so the file is the box's
own) and keeps it as DEPLOY_HOME/certs/rental-<id>.pem; the ledger row's meta holds its path (`tls_cert`) and the
sha256 of its DER bytes (`tls_cert_sha256`). Every client here (the ready poll, `deploy generate`, fleet probes, the
HAProxy gateway) trusts that file and nothing else for the rental: a server presenting any other certificate is
refused before the bearer token is sent. The key never leaves the box.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from deploy.errors import RemoteError, UsageError

if TYPE_CHECKING:
    from deploy.ledger.records import ServerRecord


def certs_dir(home: Path) -> Path:
    directory = Path(home) / "certs"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    return directory


def cert_path(home: Path, rental_id: int) -> Path:
    return certs_dir(home) / f"rental-{rental_id}.pem"


def pem_fingerprint(pem: bytes) -> str:
    """sha256 (hex) of the first certificate's DER bytes: `openssl x509 -noout -fingerprint -sha256`, no colons."""
    text = pem.decode("ascii", errors="replace")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise RemoteError("the box's TLS certificate file holds no PEM certificate")
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(text[start : stop + len(end)] + "\n")).hexdigest()


def pinned(server: ServerRecord) -> Path | None:
    """The pinned certificate of a rental's server, after checking the file still is that one."""
    path = server.tls_cert
    if not path:
        return None
    p = Path(path)
    try:
        digest = pem_fingerprint(p.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read the pinned TLS certificate {p}: {exc.strerror}") from None
    if digest != server.tls_cert_sha256:
        raise UsageError(f"the TLS certificate file {p} is not the one pinned in the ledger (sha256 differs)")
    return p


def client_context(cert: str | Path) -> ssl.SSLContext:
    """An SSL context that trusts exactly `cert` (the host name must still be one the certificate names)."""
    return ssl.create_default_context(cafile=str(cert))


def with_scheme(url: str, tls: bool) -> str:
    """`http://h:p` -> `https://h:p` when `tls` (and back)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="https" if tls else "http"))


def is_certificate_error(exc: BaseException) -> bool:
    """An httpx/ssl failure that says the peer's certificate did not verify (not merely "no answer")."""
    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False
