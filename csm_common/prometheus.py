"""Reading the samples of a Prometheus text page (the runtime's /metrics), for the fleet's probe (deploy/) and the
box's watchdog (csm_runtime/). Standard library only: the control plane does not install prometheus_client."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)(?:\s+-?\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


def samples(text: str) -> Iterator[Sample]:
    """Every sample line of the page, in order; comments, blank lines and lines that are not samples are skipped."""
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if not m:
            continue
        name, labels, raw = m.groups()
        try:
            value = float(raw)
        except ValueError:
            continue
        found = {k: re.sub(r"\\[\\\"n]", lambda e: _UNESCAPE[e.group(0)], v) for k, v in _LABEL.findall(labels or "")}
        yield Sample(name, found, value)


def values(text: str, names: set[str] | frozenset[str]) -> dict[str, float]:
    """The last sample of each of `names` on the page (for metrics without labels: one sample each)."""
    return {s.name: s.value for s in samples(text) if s.name in names}
