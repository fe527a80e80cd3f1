"""Reuse of prompt-prefix KV across calls: token-block hashing, LRU under a byte budget.

A prefix is cut into blocks of ``block`` tokens and each block boundary gets a chained hash (the
hash of the boundary before it and the block's tokens), so two prompts that agree on their first
``n`` blocks agree on the first ``n`` boundary hashes. An entry is a compact single-row copy of the
KV cache exactly at one boundary, with the hidden state of its last position; a lookup takes the
longest boundary of the new prompt that has an entry, and the caller prefills only what follows.

Entries hold whole cache states rather than shared blocks because sliding-window layers keep a
ring that cannot be cut back to an earlier position. Entries are keyed by the hash and also keep
their tokens, so a hash collision is a miss, never a wrong answer. Results are exact: the cached
state is the state the same prefill would have produced (chunked prefill equals one-shot
prefill), which the tests check against recomputation.
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass

import torch

from engine.cache import KVCache


@dataclass
class PrefixEntry:
    tokens: tuple[int, ...]
    cache: KVCache  # single row, offset == len(tokens); never mutated (lookups hand out copies)
    last_hidden: torch.Tensor  # [1, H] final hidden state of the last prefix position
    nbytes: int


@dataclass
class PrefixCacheStats:
    lookups: int = 0
    hits: int = 0
    reused_tokens: int = 0
    stored: int = 0
    evicted: int = 0
    entries: int = 0
    bytes: int = 0


def boundary_hashes(ids: list[int], block: int) -> list[bytes]:
    """Chained hash at every whole-block boundary of ``ids``: element ``i`` covers ``(i + 1) * block`` tokens."""
    hashes = []
    digest = b""
    for end in range(block, len(ids) + 1, block):
        hasher = hashlib.blake2b(digest, digest_size=16)
        hasher.update(array("q", ids[end - block : end]).tobytes())
        digest = hasher.digest()
        hashes.append(digest)
    return hashes


class PrefixCache:
    """Thread-safe LRU of prefix KV states. ``budget_bytes`` 0 turns it off."""

    def __init__(self, budget_bytes: int, block: int = 16) -> None:
        if block < 1:
            raise ValueError("prefix cache block must be at least 1 token")
        if budget_bytes < 0:
            raise ValueError("prefix cache budget must be >= 0 bytes")
        self.budget_bytes = budget_bytes
        self.block = block
        self._entries: OrderedDict[bytes, PrefixEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.stats = PrefixCacheStats()

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def aligned(self, length: int) -> int:
        """The longest whole-block length not beyond ``length``: where an entry would be stored."""
        return length // self.block * self.block

    def lookup(self, ids: list[int]) -> tuple[KVCache, torch.Tensor, int] | None:
        """A private copy of the longest cached prefix of ``ids``, its last hidden state and its length."""
        if not self.enabled:
            return None
        hashes = boundary_hashes(ids, self.block)
        with self._lock:
            self.stats.lookups += 1
            for count in range(len(hashes), 0, -1):
                entry = self._entries.get(hashes[count - 1])
                length = count * self.block
                if entry is not None and entry.tokens == tuple(ids[:length]):
                    self._entries.move_to_end(hashes[count - 1])
                    self.stats.hits += 1
                    self.stats.reused_tokens += length
                    return entry.cache.repeat(1), entry.last_hidden, length
        return None

    def store(self, ids: list[int], cache: KVCache, last_hidden: torch.Tensor) -> None:
        """Keep a copy of ``cache`` (single row, ``len(ids)`` positions, block-aligned) for ``ids``."""
        if not self.enabled or not ids or len(ids) % self.block or cache.offset != len(ids):
            return
        key = boundary_hashes(ids, self.block)[-1]
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
        snapshot = cache.repeat(1)
        entry = PrefixEntry(tuple(ids), snapshot, last_hidden.detach().clone(),
                            snapshot.nbytes() + last_hidden.numel() * last_hidden.element_size())
        if entry.nbytes > self.budget_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            while self._entries and self._bytes + entry.nbytes > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.stats.evicted += 1
            self._entries[key] = entry
            self._bytes += entry.nbytes
            self.stats.stored += 1
            self.stats.entries = len(self._entries)
            self.stats.bytes = self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.stats.entries = 0
            self.stats.bytes = 0
