"""TLS for the server: a bind reachable from other machines serves HTTPS only, so the bearer token never crosses a
network in clear.

`--ssl-certfile/--ssl-keyfile` (uvicorn's names) bring your own certificate. Without them a non-loopback bind uses a
self-signed certificate kept in `tls_dir` (cert.pem, key.pem 0600 in a 0700 folder): made at the first start for
127.0.0.1, localhost, this machine's name and addresses and the `ssl_san` names (deploy passes the box's public IP,
which on vast is not an address of the container), and reused while it covers them and stays valid for a week, so
a client that pinned it keeps working across restarts. Clients trust exactly that file (curl `--cacert`, httpx
`verify=`); `deploy` fetches it over SSH and pins it.

The `cryptography` package makes the certificate (requirements/runtime.txt pins it). It loads only for that.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

VALID_DAYS = 825  # the longest validity Apple's clients accept for a server certificate
RENEW_BEFORE = datetime.timedelta(days=7)
CERT_NAME, KEY_NAME = "cert.pem", "key.pem"


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    self_signed: bool
    names: tuple[str, ...] = ()  # what a self-signed certificate covers

    @property
    def sha256(self) -> str:
        return fingerprint(self.cert.read_bytes())


class TlsError(ValueError):
    """A certificate or key that cannot be used; the message names the file."""


def fingerprint(pem: bytes) -> str:
    """sha256 of the (first) certificate's DER bytes, hex: what `openssl x509 -fingerprint -sha256` shows."""
    import ssl

    text = pem.decode("ascii", errors="replace")
    start = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----", start)
    if start < 0 or end < 0:
        raise TlsError("not a PEM certificate")
    der = ssl.PEM_cert_to_DER_cert(text[start : end + len("-----END CERTIFICATE-----")] + "\n")
    return hashlib.sha256(der).hexdigest()


def machine_names(host: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """What a self-signed certificate should cover: loopback, this machine's name and non-loopback addresses, the
    bind address when it is a specific one, and `extra` (e.g. the public IP a provider maps to this machine)."""
    names = ["127.0.0.1", "::1", "localhost"]
    if host not in ("0.0.0.0", "::", ""):
        names.append(host.strip("[]"))
    try:
        import psutil

        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    ip = a.address.split("%")[0]
                    if not ipaddress.ip_address(ip).is_link_local:
                        names.append(ip)
    except (ImportError, OSError, ValueError):
        pass
    hostname = socket.gethostname()
    if hostname:
        names.append(hostname)
    names += [n.strip() for n in extra if n.strip()]
    return tuple(dict.fromkeys(_normal(n) for n in names))


def _normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return name.lower()


def _general_names(names: tuple[str, ...]):
    from cryptography import x509

    out = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def covered_names(cert_pem: bytes) -> tuple[set[str], datetime.datetime]:
    """(the names and addresses a certificate covers, its expiry in UTC)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), cert.not_valid_after_utc
    names = {_normal(str(v)) for v in san.get_values_for_type(x509.IPAddress)}
    names |= {v.lower() for v in san.get_values_for_type(x509.DNSName)}
    return names, cert.not_valid_after_utc


def _reusable(files: TlsFiles, names: tuple[str, ...]) -> bool:
    if not (files.cert.is_file() and files.key.is_file()):
        return False
    try:
        covered, expires = covered_names(files.cert.read_bytes())
    except (OSError, ValueError):
        return False
    now = datetime.datetime.now(datetime.timezone.utc)
    return set(names) <= covered and expires - now > RENEW_BEFORE


def make_self_signed(directory: Path, names: tuple[str, ...]) -> TlsFiles:
    """A fresh EC P-256 key (written 0600 before any byte of it) and a self-signed certificate for `names`.

    The certificate is its own issuer and is marked as a CA, so clients can trust it as the one anchor (OpenSSL,
    HAProxy, httpx, curl all accept a self-signed server certificate given as the CA file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"csm-runtime {names[0] if names else ''}".strip())])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    files = TlsFiles(directory / CERT_NAME, directory / KEY_NAME, True, names)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(files.key, key_pem)
    tmp = files.cert.with_name(files.cert.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.replace(files.cert)  # a reader never sees half a certificate
    return files


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def ensure_self_signed(directory: Path, names: tuple[str, ...]) -> TlsFiles:
    """The certificate in `directory` when it still covers `names`, else a new one."""
    files = TlsFiles(directory / CERT_NAME, directory / KEY_NAME, True, names)
    if _reusable(files, names):
        os.chmod(files.key, 0o600)
        return files
    return make_self_signed(directory, names)


def resolve_tls(
    host: str, *, public: bool, certfile: str | None, keyfile: str | None, tls_dir: str, san: tuple[str, ...]
) -> TlsFiles | None:
    """The certificate to serve with: the one given, a self-signed one when the bind `host` is `public` (not
    loopback), or None (plain HTTP, loopback only). Raises TlsError for a half-given or unreadable pair."""
    if bool(certfile) != bool(keyfile):
        raise TlsError("--ssl-certfile and --ssl-keyfile go together: give both, or neither for a self-signed one")
    if certfile and keyfile:
        for what, path in (("certificate", certfile), ("key", keyfile)):
            if not os.access(path, os.R_OK):
                raise TlsError(f"cannot read the TLS {what} {path}")
        return TlsFiles(Path(certfile), Path(keyfile), False)
    if not public:
        return None
    try:
        return ensure_self_signed(Path(tls_dir).expanduser().resolve(), machine_names(host, san))
    except ImportError:
        raise TlsError(
            "a non-loopback bind serves TLS, and making a self-signed certificate needs the `cryptography` package "
            "(requirements/runtime.txt pins it); or pass --ssl-certfile and --ssl-keyfile"
        ) from None
