"""Keeping an open store's long-lived objects out of Python's full garbage collections.

A store of 10^6 chunks holds millions of Python objects (documents, chunk rows, metadata) that live
as long as it is open. CPython's full collection (generation 2) traverses every tracked object while
holding the interpreter lock, and it runs by itself whenever the objects that reached generation 2
since the last one outnumber a quarter of those already there: at 10^6 chunks, about every few tens
of thousands of writes, one write (and every search) waited for a whole traversal, with or without a
snapshot running (``bench/results/store.md``, the writer-alone control window).

``settle`` collects once and moves every object then alive to the permanent generation
(``gc.freeze``), which collections skip; frozen objects that die later are still freed by their
reference counts (a store's rows hold no reference cycles). The store settles after it opens and
after each snapshot, so a collection traverses at most what one snapshot interval added.
``release`` (on close) hands the frozen objects back to the collector, so reference cycles that
became garbage meanwhile, anywhere in the process, are collected again.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect, then freeze everything alive out of later collections' traversals."""
    gc.collect()
    gc.freeze()


def release() -> None:
    """Return the frozen objects to the oldest generation."""
    gc.unfreeze()
