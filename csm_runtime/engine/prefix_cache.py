"""Backbone keys and values of prompt prefixes, kept for the next request that starts with the same context.

A voice's reference segment, or the turns a conversation has said so far, open every request that uses them; their
backbone KV depends only on those rows (attention is causal), so it is computed once and copied into the next
request's cache row instead of being prefilled again.

Keys are hashes of the prompt rows (token, codes, audio flag) up to a context segment's end (`prefix_keys`), so a
request finds the longest stored prefix that ends at one of its segment boundaries: a conversation that grew by a
turn reuses everything before the new turn. One entry holds the KV of a whole context prefix and answers for every
segment boundary inside it, so storing a longer prefix drops the shorter entries it contains. Entries are evicted
least recently used first to keep the total under `max_bytes`; 0 disables the cache.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor


def prefix_keys(tokens: list[int], codes: Tensor, is_audio: Tensor, boundaries: list[int]) -> list[bytes]:
    """One digest per boundary b: a hash of rows :b (each row's token, its codes when it is an audio row). The hash is
    chained, so the digest at b_i depends on every row before it."""
    h = hashlib.blake2b(digest_size=20)
    out, start = [], 0
    toks = torch.as_tensor(tokens, dtype=torch.int64)
    flags = torch.as_tensor(is_audio, dtype=torch.bool).cpu()
    audio_codes = torch.where(flags[:, None], codes.cpu().to(torch.int64), 0)
    for end in boundaries:
        h.update(toks[start:end].numpy().tobytes())
        h.update(flags[start:end].numpy().tobytes())
        h.update(audio_codes[start:end].contiguous().numpy().tobytes())
        out.append(h.copy().digest())
        start = end
    return out


@dataclass
class PrefixEntry:
    """The KV of rows :length in every backbone layer, [kv_heads, length, head_dim] per tensor."""

    keys: list[Tensor]
    values: list[Tensor]
    length: int
    nbytes: int
    bounds: dict[bytes, int]  # every segment-boundary digest inside the entry -> its length


class PrefixCache:
    """An LRU of PrefixEntry, bounded by bytes, indexed by every segment-boundary digest inside each entry."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._entries: OrderedDict[bytes, PrefixEntry] = OrderedDict()  # digest of the whole entry -> entry
        self._index: dict[bytes, tuple[bytes, int]] = {}  # boundary digest -> (entry digest, length)
        self.bytes = 0
        self.hits = self.misses = self.evictions = self.stores = 0
        self.reused_rows = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def lookup(self, keys: list[bytes], boundaries: list[int]) -> tuple[int, PrefixEntry | None]:
        """The longest stored prefix among the boundaries: (its length, the entry holding it), or (0, None). Counts a
        hit or a miss, and marks the entry recently used."""
        for key, end in zip(reversed(keys), reversed(boundaries), strict=True):
            found = self._index.get(key)
            if found is not None and found[1] == end:
                self._entries.move_to_end(found[0])
                self.hits += 1
                self.reused_rows += end
                return end, self._entries[found[0]]
        self.misses += 1
        return 0, None

    def store(self, keys: list[bytes], boundaries: list[int], keys_kv: list[Tensor], values_kv: list[Tensor]) -> bool:
        """Keep the KV of rows :boundaries[-1] under `keys` (one digest per boundary). An entry larger than the whole
        budget is not kept. Returns whether it was stored."""
        if not self.enabled or not keys:
            return False
        top = keys[-1]
        if top in self._entries:
            self._entries.move_to_end(top)
            return True
        nbytes = sum(t.numel() * t.element_size() for t in (*keys_kv, *values_kv))
        if nbytes > self.max_bytes:
            return False
        for key in keys[:-1]:  # shorter entries this one contains answer from it from now on
            if key in self._entries:
                self._drop(key)
        while self._entries and self.bytes + nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        bounds = dict(zip(keys, boundaries, strict=True))
        self._entries[top] = PrefixEntry(keys_kv, values_kv, boundaries[-1], nbytes, bounds)
        self.bytes += nbytes
        for key, end in zip(keys, boundaries, strict=True):
            self._index[key] = (top, end)
        self.stores += 1
        return True

    def _drop(self, top: bytes) -> None:
        """Forget an entry; a boundary it shared with another entry (two conversations opening with the same voice)
        is answered by that one from now on."""
        entry = self._entries.pop(top)
        self.bytes -= entry.nbytes
        for key, end in entry.bounds.items():
            if self._index.get(key, (None,))[0] != top:
                continue
            other = next((name for name, e in reversed(self._entries.items()) if key in e.bounds), None)
            if other is None:
                del self._index[key]
            else:
                self._index[key] = (other, end)

    def clear(self) -> None:
        self._entries.clear()
        self._index.clear()
        self.bytes = 0

    def stats(self) -> dict:
        """Counters and gauges for /metrics."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "stores": self.stores,
            "evictions": self.evictions,
            "reused_rows": self.reused_rows,
            "entries": len(self._entries),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
        }
