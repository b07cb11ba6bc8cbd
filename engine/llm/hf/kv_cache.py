"""Per-session KV caches of the prompt, kept across turns under a memory budget (LRU).

A turn's prompt is the previous turn's prompt plus the reply that was sent and what the customer
said next, so its first few hundred tokens were already encoded last turn. Keeping those keys and
values lets the next turn encode only the new tokens: the first-token time of a turn after a long
history drops from seconds to a fraction of a second on a CPU.

Only the prompt is kept, not the generated draft: in strict mode the history holds the approved
script that was sent, not the draft, so the draft's tokens would almost never be reused. Reuse is
decided on token ids (the longest common prefix of the cached ids and the new prompt ids), never
on text, so a changed system prompt or a history window that slid simply reuses less.

Memory: every entry's bytes are counted exactly (``numel * element_size`` of its tensors); when a
new entry would take the total over ``budget_mb`` the least recently used entries are evicted
first. An entry larger than the whole budget is not kept. ``budget_mb=0`` turns reuse off.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.llm.tokens import common_prefix

MB = 1 << 20

KVLayers = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (keys, values), [1,H,T,D]


@dataclass(frozen=True)
class CacheEntry:
    ids: tuple[int, ...]
    layers: KVLayers
    nbytes: int


@dataclass
class CacheStats:
    hits: int = 0  # lookups that reused at least one token
    misses: int = 0
    reused_tokens: int = 0
    evictions: int = 0
    released: int = 0


def layers_nbytes(layers: KVLayers) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


class SessionKVCache:
    """LRU map session key -> (prompt token ids, KV tensors), bounded by ``budget_mb``."""

    def __init__(self, budget_mb: float = 512.0):
        if budget_mb < 0:
            raise ValueError(f"cache budget_mb must be >= 0, got {budget_mb}")
        self.budget_bytes = int(budget_mb * MB)
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self.stats = CacheStats()

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    @property
    def nbytes(self) -> int:
        """Bytes held by all cached sessions now (always <= the budget)."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def lookup(self, key: str | None, ids: Sequence[int]) -> tuple[int, KVLayers | None]:
        """How many leading tokens of ``ids`` are cached for ``key``, and their KV (views).

        At least one token is always left to encode: the model needs a last position to
        predict from.
        """
        if key is None or not self.enabled:
            return 0, None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                return 0, None
            self._entries.move_to_end(key)
        reuse = min(common_prefix(entry.ids, ids), len(ids) - 1)
        if reuse <= 0:
            self.stats.misses += 1
            return 0, None
        self.stats.hits += 1
        self.stats.reused_tokens += reuse
        return reuse, tuple((k[:, :, :reuse], v[:, :, :reuse]) for k, v in entry.layers)

    def store(self, key: str | None, ids: Sequence[int], layers: KVLayers) -> bool:
        """Keep ``layers`` (contiguous tensors owned by the cache) as ``key``'s prompt cache."""
        if key is None or not self.enabled:
            return False
        nbytes = layers_nbytes(layers)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            if nbytes > self.budget_bytes:
                return False
            while self._entries and self._nbytes + nbytes > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._nbytes -= evicted.nbytes
                self.stats.evictions += 1
            self._entries[key] = CacheEntry(tuple(ids), layers, nbytes)
            self._nbytes += nbytes
            return True

    def release(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            self._nbytes -= entry.nbytes
            self.stats.released += 1
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0
