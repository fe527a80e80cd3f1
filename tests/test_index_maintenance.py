"""The embedded store's upkeep: log compaction keeps every live document and survives a kill after each
of its steps; a snapshot lets writes through while it copies; so does a search scanning in slices."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from test_index import RIVERS

from compressor.embedding import Embedder
from compressor.retrieval import scan
from compressor.retrieval import snapshot as snapshot_module
from compressor.retrieval import store as store_module
from compressor.retrieval import wal as wal_module
from compressor.retrieval.store import Document, IndexStore, rebuild

REPLACED = [Document("seine", f"The Seine, edition {n}, flows through Paris to Le Havre.", {"lang": "en"})
            for n in range(6)]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def documents(store: IndexStore) -> dict[str, tuple[dict, str]]:
    """Document id -> (metadata, its chunks' text), of the namespace ``wiki``."""
    space = store.namespaces["wiki"]
    return {doc_id: (entry.metadata, " ".join(space.chunks[i][2] for i in entry.chunk_ids))
            for doc_id, entry in space.documents.items()}


def churned(root: Path, embedder: Embedder) -> tuple[dict, int]:
    """A log holding dead versions: the rivers, the Seine replaced six times, the Alps deleted; the
    store closed without a snapshot. Returns the live documents and the log's size."""
    store = IndexStore(root, embedder, compact_ratio=0)
    store.upsert("wiki", RIVERS)
    for document in REPLACED:
        store.upsert("wiki", [document])
    store.delete("wiki", ["alps"])
    expected, size = documents(store), store.wal.end
    store.close(snapshot=False)
    return expected, size


def test_compaction_keeps_the_live_set_and_shrinks_the_log(tmp_path: Path, embedder: Embedder) -> None:
    expected, before = churned(tmp_path, embedder)
    store = IndexStore(tmp_path, embedder, compact_ratio=0)
    store.compact_log()
    assert store.wal_name != "wal.log" and store.wal.end < before / 3
    assert [p.name for p in tmp_path.glob("wal*.log")] == [store.wal_name]
    store.upsert("wiki", [Document("loire", "The Loire is the longest river of France.", {"lang": "en"})])
    expected["loire"] = ({"lang": "en"}, "The Loire is the longest river of France.")
    store.close(snapshot=False)  # the Loire lives only in the compacted log's tail
    reopened = IndexStore(tmp_path, embedder)
    assert documents(reopened) == expected
    assert reopened.search("wiki", "Paris", 1)[0].document_id == "seine"
    reopened.close(snapshot=False)
    rebuild(tmp_path)  # replaying the compacted log from its start gives the same state
    rebuilt = IndexStore(tmp_path, embedder)
    assert documents(rebuilt) == expected and rebuilt.search("wiki", "Loire", 1)[0].document_id == "loire"
    rebuilt.close()


def test_a_namespace_emptied_by_deletes_survives_snapshots_and_compaction(tmp_path: Path, embedder: Embedder) -> None:
    """Over 1000 deleted chunks make the snapshot compact the vectors to none: an empty vectors file."""
    log = wal_module.WriteAheadLog(tmp_path / "wal.log")
    ids = [f"doc-{n}" for n in range(1200)]
    log.append({"op": "upsert", "ns": "wiki", "dim": embedder.dim, "embedder": embedder.name, "first_id": 0,
                "seq": 1, "docs": [{"id": i, "metadata": {}, "chunks": [i]} for i in ids]},
               np.eye(1200, embedder.dim, dtype=np.float32).tobytes())
    log.append({"op": "delete", "ns": "wiki", "seq": 2, "ids": ids})
    log.close()
    store = IndexStore(tmp_path, embedder, compact_ratio=0)
    store.compact_log()  # snapshots first (the vectors compacted to zero rows), then rewrites the log from it
    assert store.namespaces["wiki"].vectors.index.ntotal == 0
    store.close(snapshot=False)
    for snapshot_alone in (True, False):
        reopened = IndexStore(tmp_path, embedder, open_log=not snapshot_alone)
        assert not reopened.namespaces["wiki"].documents
        assert reopened.search("wiki", "anything", 3) == []
        reopened.close(snapshot=False)


@pytest.mark.parametrize("step", ["written", "switched", "dropped"])
def test_a_kill_after_any_compaction_step_loses_nothing(tmp_path: Path, embedder: Embedder, step: str) -> None:
    expected, before = churned(tmp_path, embedder)
    script = ("import os, signal, sys\n"
              "from compressor.retrieval.store import IndexStore\n"
              "store = IndexStore(sys.argv[1], compact_ratio=0)\n"
              "def step(name):\n"
              "    if name == sys.argv[2]:\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "store.compact_log(step)\n")
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path), step], timeout=120)
    assert killed.returncode == -9
    store = IndexStore(tmp_path, embedder)
    assert documents(store) == expected
    assert store.search("wiki", "Le Havre", 1)[0].document_id == "seine"
    assert [p.name for p in tmp_path.glob("wal*.log")] == [store.wal_name]  # the other log was dropped
    compacted = step != "written"
    assert (store.wal_name != "wal.log") == compacted and (store.wal.end < before / 3) == compacted
    store.close()


def test_writes_go_through_while_a_snapshot_copies(tmp_path: Path, embedder: Embedder,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = IndexStore(tmp_path, embedder, snapshot_every=10**6)
    store.upsert("wiki", RIVERS)
    taken_at = store.seq
    copying, written = threading.Event(), threading.Event()
    plain_write = snapshot_module._File.write

    def write_and_wait(self, data) -> None:  # the snapshot pauses between two slices of rows
        plain_write(self, data)
        if self.path.suffix == ".vectors" and not copying.is_set():
            copying.set()
            assert written.wait(30), "a write waited for the snapshot's copy"

    monkeypatch.setattr(snapshot_module, "SLICE_ROWS", 1)
    monkeypatch.setattr(snapshot_module._File, "write", write_and_wait)
    snapshotting = threading.Thread(target=store.snapshot)
    snapshotting.start()
    assert copying.wait(30)
    store.upsert("wiki", [Document("loire", "The Loire is the longest river of France.")])
    store.delete("wiki", ["alps"])
    written.set()
    snapshotting.join(30)
    assert store.snapshot_seq == taken_at < store.seq  # the snapshot is the picture taken before the writes
    expected = documents(store)
    store.close(snapshot=False)
    reopened = IndexStore(tmp_path, embedder)  # snapshot, then the two writes replayed from the log
    assert documents(reopened) == expected and "alps" not in expected and "loire" in expected
    reopened.close()


def many_passages(count: int) -> list[Document]:
    topics = ["harbour lights", "copper mining", "river ferries", "mountain passes", "glass blowing"]
    return [Document(f"p{n}", f"Passage {n} is about {topics[n % len(topics)]} in town number {n}.",
                     {"topic": topics[n % len(topics)].split()[0]}) for n in range(count)]


def test_a_search_in_slices_finds_what_a_whole_search_finds(tmp_path: Path, embedder: Embedder,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = IndexStore(tmp_path, embedder, snapshot_every=10**6)
    store.upsert("wiki", many_passages(300))
    store.delete("wiki", [f"p{n}" for n in range(0, 300, 7)])  # tombstones in every slice
    whole = store.search("wiki", "ferries crossing the river", 10)
    monkeypatch.setattr(store_module, "SEARCH_SLICE_ROWS", 32)
    sliced = store.search("wiki", "ferries crossing the river", 10)
    assert [(h.document_id, round(h.score, 5)) for h in sliced] == [(h.document_id, round(h.score, 5)) for h in whole]
    assert all(int(h.document_id[1:]) % 7 for h in sliced)
    store.close(snapshot=False)


@pytest.mark.parametrize("compacted", [False, True])
def test_writes_go_through_while_a_search_scans(tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch,
                                                compacted: bool) -> None:
    """A search paused between two slices, its lock released: an upsert and a delete complete
    meanwhile (and, in one run, the vectors are compacted, moving every row), and the search's result
    is the state at its end (the deleted document gone, the new one found)."""
    store = IndexStore(tmp_path, embedder, snapshot_every=10**6)
    store.upsert("wiki", many_passages(200))
    query = "ferries crossing the river"
    before = store.search("wiki", query, 5)
    scanned, scanning, written = threading.Event(), threading.Event(), threading.Event()
    plain = scan._candidates

    def candidates(*args):
        scanned.set()
        return plain(*args)

    class PausingLock:
        """The store's lock; the searching thread pauses once, just after its first slice let go of it."""

        def __init__(self, lock) -> None:
            self.lock = lock

        def __enter__(self):
            return self.lock.__enter__()

        def __exit__(self, *exc):
            self.lock.__exit__(*exc)
            if threading.current_thread() is searching and scanned.is_set() and not scanning.is_set():
                scanning.set()
                assert written.wait(30), "a write waited for the search"

    monkeypatch.setattr(store_module, "SEARCH_SLICE_ROWS", 64)
    monkeypatch.setattr(scan, "_candidates", candidates)
    monkeypatch.setattr(store, "_lock", PausingLock(store._lock))
    result: list = []
    searching = threading.Thread(target=lambda: result.append(store.search("wiki", query, 5)))
    searching.start()
    assert scanning.wait(30)
    store.upsert("wiki", [Document("ferry", "River ferries crossing the river carry people across.")])
    store.delete("wiki", [before[0].document_id])
    if compacted:
        with store._lock:
            store.namespaces["wiki"].vectors.compact()
    written.set()
    searching.join(30)
    found = [h.document_id for h in result[0]]
    assert len(found) == 5 and before[0].document_id not in found and "ferry" in found
    assert found == [h.document_id for h in store.search("wiki", query, 5)]
    store.close(snapshot=False)


def test_searches_go_on_while_a_write_waits_for_its_fsync(tmp_path: Path, embedder: Embedder,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A write paused in its log fsync: a search completes meanwhile and does not see the write; once the
    write returns, searches see it."""
    store = IndexStore(tmp_path, embedder, snapshot_every=10**6)
    store.upsert("wiki", RIVERS)
    syncing, searched = threading.Event(), threading.Event()
    plain_fsync = wal_module.os.fsync

    def fsync_and_wait(fd: int) -> None:
        plain_fsync(fd)
        if threading.current_thread() is writing and not syncing.is_set():
            syncing.set()
            assert searched.wait(30), "a search waited for a write's fsync"

    monkeypatch.setattr(wal_module.os, "fsync", fsync_and_wait)
    writing = threading.Thread(target=store.upsert, args=("wiki", [Document("loire", "The Loire is the longest "
                                                                                     "river of France.")]))
    writing.start()
    assert syncing.wait(30)
    during = [h.document_id for h in store.search("wiki", "longest river of France", 3)]
    searched.set()
    writing.join(30)
    assert "loire" not in during
    assert store.search("wiki", "longest river of France", 1)[0].document_id == "loire"
    store.close(snapshot=False)
