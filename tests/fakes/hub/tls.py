"""The stand-in's TLS: huggingface_hub reads a bare 401 as "repository not found" only over https."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # also the CA bundle clients trust (REQUESTS_CA_BUNDLE)
    key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1 and localhost (openssl CLI)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / "hub-cert.pem", folder / "hub-key.pem")
    req = shlex.split("req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost")
    names = "subjectAltName=DNS:localhost,IP:127.0.0.1"
    keys = ["-keyout", str(files.key), "-out", str(files.cert)]
    subprocess.run(["openssl", *req, "-addext", names, *keys], check=True, capture_output=True, timeout=60)
    return files
