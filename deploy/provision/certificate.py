"""TLS for a server on a public address, from the provision side: what `start` tells the runtime, and what `ready`
fetches and pins.

A server bound to anything but loopback serves HTTPS only (csm_runtime/server/tls.py) with a self-signed certificate
it keeps in `<box dir>/tls`; `start` names that folder and the public address the provider maps to the box (on vast
not an address of the container, so the runtime could not know it). Once the server listens, `ready` copies the
certificate back over SSH (sha256-checked, through the pinned host key) and pins it in the ledger
(deploy/remote/tls.py); every client here trusts only that file for this rental.
"""

from __future__ import annotations

import ipaddress

from deploy.errors import RemoteError
from deploy.provision.context import Context
from deploy.remote.tls import cert_path, pem_fingerprint

TLS_DIR = "tls"  # in the box dir: cert.pem, key.pem (0600, never copied off the box)
CERT_FILE = "cert.pem"


def serves_tls(bind: str) -> bool:
    """The runtime's rule: every non-loopback bind is HTTPS."""
    if bind in ("localhost", "ip6-localhost"):
        return False
    try:
        return not ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return True


def tls_args(ctx: Context, box_dir: str) -> list[str]:
    """`serve` options for a public bind: where its certificate lives, and the public address it must cover."""
    opts = ctx.runtime
    assert opts is not None
    if not serves_tls(opts.bind):
        return []
    args = ["--tls-dir", f"{box_dir}/{TLS_DIR}"]
    if ctx.direct is not None:
        args += ["--ssl-san", ctx.direct.host]
    return args


def local_server_args(bind: str, port: int, box_dir: str) -> list[str]:
    """How a program on the box reaches the server there (the watchdog): its loopback, over HTTPS with its
    certificate when it serves TLS."""
    if serves_tls(bind):
        return ["--server", f"https://127.0.0.1:{port}", "--cafile", f"{box_dir}/{TLS_DIR}/{CERT_FILE}"]
    return ["--server", f"http://127.0.0.1:{port}"]


def fetch_and_pin(ctx: Context) -> str:
    """Copy the server's certificate here and pin it for the rental; returns the local path."""
    assert ctx.host is not None and ctx.layout is not None
    local = cert_path(ctx.settings.home_path, ctx.rental_id)
    remote = ctx.layout.path(f"{TLS_DIR}/{CERT_FILE}")
    try:
        ctx.host.get(remote, local)
    except (OSError, RemoteError) as exc:
        raise RemoteError(f"could not copy the server's TLS certificate {remote} from the box: {exc}") from None
    local.chmod(0o600)
    digest = pem_fingerprint(local.read_bytes())
    ctx.ledger.pin_tls_cert(ctx.rental_id, str(local), digest)
    ctx.refresh()
    ctx.log(f"the server's TLS certificate (sha256 {digest[:16]}…) is pinned: {local}")
    return str(local)
