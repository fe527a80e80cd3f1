"""A search of a large exact namespace one slice of rows at a time, so that the store's lock is held
for one slice's matrix product (a few milliseconds), not for a scan of a million rows while writes
and snapshots wait.

Consistency: the result is what a search at its end would return. Rows added during the search
are scanned at the end; rows deleted during it are dropped at the end, and a slice whose list of
candidates lost one is scanned again then (each slice keeps ``MARGIN`` more candidates than asked
for, so this is rare). If the namespace's index is replaced meanwhile (compaction, training, a new
namespace), the caller searches again, whole, under its lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from compressor.retrieval.vectors import VectorIndex

MARGIN = 16  # candidates kept per slice beyond the k asked for
Result = TypeVar("Result")


def _candidates(vectors: VectorIndex, query: np.ndarray, wanted: int, start: int, stop: int) -> list[tuple[float, int]]:
    scores, ids = vectors.search_rows(query, wanted, start, stop)
    return [(float(score), int(chunk_id)) for score, chunk_id in zip(scores[0], ids[0]) if chunk_id >= 0]


def search_in_slices(lock: threading.RLock, unchanged: Callable[[], bool], vectors: VectorIndex, query: np.ndarray,
                     k: int, slice_rows: int, live: Callable[[int], bool],
                     finish: Callable[[list[tuple[float, int]]], Result]) -> Result | None:
    """The best ``k`` (score, chunk id) of ``query`` (one row) over ``vectors``, ``slice_rows`` rows
    per hold of the lock, handed to ``finish`` under the lock. ``unchanged`` (asked under the lock)
    says whether the namespace still searches ``vectors`` with the same index; when it turns false,
    None. ``live`` says whether a chunk id is still stored."""
    wanted = k + MARGIN
    with lock:
        if not unchanged():
            return None
        total = vectors.index.ntotal
    found: list[tuple[int, int, list[tuple[float, int]]]] = []
    for start in range(0, total, slice_rows):
        stop = min(start + slice_rows, total)
        with lock:
            if not unchanged():
                return None
            found.append((start, stop, _candidates(vectors, query, wanted, start, stop)))
        time.sleep(0)  # let a waiting writer take the lock: a released lock is not handed to its waiter
    with lock:
        if not unchanged():
            return None
        end = vectors.index.ntotal
        if end > total:  # written during the search
            found.append((total, end, _candidates(vectors, query, wanted, total, end)))
        best: list[tuple[float, int]] = []
        for start, stop, candidates in found:
            kept = [c for c in candidates if live(c[1])]
            if len(kept) < len(candidates) and len(candidates) == wanted:  # a full list lost rows: scan again
                kept = _candidates(vectors, query, wanted, start, stop)
            best += kept
        best.sort(key=lambda c: -c[0])
        return finish(best[:k])
