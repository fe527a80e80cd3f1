"""An open store's objects are kept out of Python's full collections (``heap.py``): frozen once it
opens and after each snapshot, handed back to the collector when it closes."""

from __future__ import annotations

import gc
from pathlib import Path

from test_index import RIVERS

from compressor.embedding import Embedder
from compressor.retrieval.contract import Document
from compressor.retrieval.store import IndexStore


def collected(thing: object) -> bool:
    """Whether the collector's generations (not the permanent one) hold ``thing``."""
    return any(tracked is thing for tracked in gc.get_objects())


def test_the_store_is_frozen_while_open_and_released_on_close(tmp_path: Path) -> None:
    embedder = Embedder()
    store = IndexStore(tmp_path, embedder, snapshot_every=10**6)
    store.upsert("wiki", RIVERS)
    store.close()
    store = IndexStore(tmp_path, embedder, snapshot_every=10**6)
    loaded = store.namespaces["wiki"].documents["seine"]
    assert gc.is_tracked(loaded) and not collected(loaded)  # frozen when the store opened
    store.upsert("wiki", [Document("loire", "The Loire is the longest river of France.")])
    written = store.namespaces["wiki"].documents["loire"]
    assert collected(written)
    store.snapshot()
    assert not collected(written)  # frozen after the snapshot
    store.close()
    assert collected(loaded) and collected(written)
