"""The Hub token on the box, and the box's checkpoint download as the ready step sees it.

`put_hub_token` (end of `push`): the operator's token (deploy/secrets/hub_token.py) goes to `<box dir>/hf-token`, a
file created 0600 on the box before the secret is copied into it over SFTP (sha256-checked), from a 0600 file here
that is deleted right after. The runtime reads it (`--hf-token-file`); the ledger records only where the token came
from. Nothing at all is put for the random models, which download nothing.

`describe_download`: while the model loads, the server's /ready says how far the download has come (bytes, total,
rate: csm_runtime/engine/download.py); the ready step prints it and keeps waiting as long as it grows.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
from typing import Any

from deploy.ledger import records
from deploy.provision.context import Context
from deploy.secrets.hub_token import find_hub_token
from deploy.secrets.tokens import token_path

BOX_FILE = "hf-token"
RANDOM_MODELS = ("tiny-random", "csm-1b-random")  # built on the box: no download, no token
KNOWN_GATED = ("sesame/csm-1b",)  # the Hub serves these only to a token whose account accepted the terms


def needs_hub(model: str) -> bool:
    return model not in RANDOM_MODELS


def missing_token_note(model: str) -> str:
    gated = model in KNOWN_GATED
    why = f"{model} is gated: the box will be refused it" if gated else "fine for a public model"
    return (
        f"no Hugging Face token found here (HF_TOKEN, `hf auth login`, --hf-token-file): {why}; a gated checkpoint "
        "needs a token of an account that accepted its terms"
    )


def put_hub_token(ctx: Context) -> None:
    """Put the operator's Hub token on the box (0600) when the model comes from the Hub and a token exists here."""
    opts = ctx.runtime
    assert opts is not None and ctx.host is not None and ctx.layout is not None
    if not needs_hub(opts.model):
        return
    found = find_hub_token(opts.local_hf_token_file)
    box_file = ctx.layout.path(BOX_FILE)
    q = shlex.quote(box_file)
    if found is None:  # `deploy provision` said so before renting (missing_token_note)
        ctx.host.run(f"rm -f {q}", stream=False)  # a box provisioned before (ssh) keeps no older token
        ctx.log(f"no Hub token found here: the box downloads {opts.model} without one")
        ctx.event("hub_token", "none found here")
        return
    # the file exists with mode 0600 before the secret is copied into it, and stays 0600 after
    ctx.host.run(f"umask 077 && : > {q} && chmod 600 {q}", stream=False)
    private_dir = token_path(ctx.settings.home_path, BOX_FILE).parent  # DEPLOY_HOME/tokens, 0700
    fd, local = tempfile.mkstemp(prefix="hf-token-", dir=private_dir)  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(found.value + "\n")
        ctx.host.put(local, box_file)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local)
    ctx.host.run(f"chmod 600 {q}", stream=False)
    ctx.box_hf_token_file = box_file
    placed = records.hub_token_placed(source=found.source, box_file=box_file)  # where, never what
    ctx.ledger.update_meta(ctx.rental_id, **placed)
    ctx.event("hub_token", f"from {found.source} to {box_file} (0600)")
    ctx.log(f"Hub token ({found.source}) put on the box: {box_file}, mode 0600")


def hub_args(ctx: Context) -> list[str]:
    """The runtime's option naming the token file on the box, when one was put there."""
    return ["--hf-token-file", ctx.box_hf_token_file] if ctx.box_hf_token_file else []


def describe_download(body: dict[str, Any]) -> str | None:
    """`downloading sesame/csm-1b on the box: 1.20 GB of 4.10 GB (29%), 45.1 MB/s`, from a /ready body."""
    d = body.get("download")
    if not isinstance(d, dict) or not d.get("repo"):
        return None
    done, total, rate = int(d.get("done_bytes") or 0), d.get("total_bytes"), float(d.get("rate_bytes_s") or 0.0)
    size = f"{_bytes(done)} of {_bytes(total)} ({100.0 * done / total:.0f}%)" if total else f"{_bytes(done)} so far"
    return f"downloading {d['repo']} on the box: {size}, {_bytes(rate)}/s"


def download_bytes(body: dict[str, Any]) -> int | None:
    d = body.get("download")
    return int(d.get("done_bytes") or 0) if isinstance(d, dict) else None


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"
