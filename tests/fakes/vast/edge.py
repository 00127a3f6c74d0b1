"""An edge in front of the API (a CDN's browser check) that refuses clients by their User-Agent, as Cloudflare's
error 1010 does: 403 with the plain-text body "error code: 1010", before vast itself sees the request.

It refuses what such checks are known to refuse: no User-Agent at all, and urllib's default one
(`Python-urllib/3.x`). The vastai CLI (1.9.1) passes: its API calls send `vastai-cli/<version>` (api/client.py
VastClient.user_agent) and the GPU-name fetch at import sends requests' default `python-requests/<version>`.
"""

from __future__ import annotations

import re
from typing import Any

REFUSED_AGENTS = re.compile(r"^(\s*$|Python-urllib/)")
BODY = b"error code: 1010"


def refusal(enabled: bool, headers: Any) -> tuple[int, bytes, str, dict[str, str]] | None:
    """The edge's 403 for this request, or None when it passes (or no edge is in front)."""
    if not enabled:
        return None
    agent = str(headers.get("User-Agent") or "")
    if REFUSED_AGENTS.match(agent):
        return 403, BODY, "text/plain; charset=UTF-8", {"Server": "cloudflare"}
    return None
