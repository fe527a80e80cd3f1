"""A damaged write-ahead log is refused at start with the repair command, and the repair keeps every
write the snapshot or the intact log can prove; the log is fsynced before each acknowledgement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_index import RIVERS

from compressor.embedding import Embedder
from compressor.retrieval.errors import IndexCorrupt
from compressor.retrieval.repair import repair
from compressor.retrieval.store import Document, IndexStore, rebuild
from compressor.retrieval.wal import scan

MORE = [Document("loire", "The Loire is the longest river of France.", {"lang": "en", "kind": "river"}),
        Document("rhine", "The Rhine flows from the Alps to the North Sea.", {"lang": "en", "kind": "river"})]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def documents(store: IndexStore) -> dict[str, str]:
    """Document id -> its chunks' text, of the namespace ``wiki``."""
    space = store.namespaces["wiki"]
    return {doc_id: " ".join(space.chunks[i][2] for i in entry.chunk_ids) for doc_id, entry in space.documents.items()}


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def written(tmp_path: Path, embedder: Embedder, close_with_snapshot: bool) -> dict[str, str]:
    """Three upserts (one record each); the store closed with or without a final snapshot."""
    store = IndexStore(tmp_path, embedder)
    store.upsert("wiki", RIVERS[:2])
    store.upsert("wiki", RIVERS[2:])
    store.upsert("wiki", MORE)
    expected = documents(store)
    store.close(snapshot=close_with_snapshot)
    return expected


def test_a_log_cut_short_after_a_clean_stop_is_refused_and_repaired_from_the_snapshot(tmp_path, embedder):
    expected = written(tmp_path, embedder, close_with_snapshot=True)
    log = tmp_path / "wal.log"
    size = log.stat().st_size
    log.write_bytes(log.read_bytes()[:-7])
    with pytest.raises(IndexCorrupt, match=r"cut short.*focal index repair --data-dir"):
        IndexStore(tmp_path, embedder)
    assert log.stat().st_size == size - 7  # refused, and nothing was padded or written
    report = repair(tmp_path)
    assert report["action"] == "log written anew from the snapshot" and report["dropped_bytes"] == 0
    store = IndexStore(tmp_path, embedder)
    assert documents(store) == expected
    store.upsert("wiki", [Document("po", "The Po crosses the north of Italy.")])
    store.close(snapshot=False)
    rebuilt = rebuild(tmp_path)  # the log is the source of truth again
    assert rebuilt["namespaces"]["wiki"]["documents"] == len(expected) + 1


def test_a_whole_last_record_with_a_bad_checksum_is_corruption(tmp_path, embedder):
    expected = written(tmp_path, embedder, close_with_snapshot=False)
    log = tmp_path / "wal.log"
    last = list(scan(log))[-2].end  # where the last record starts
    flip(log, log.stat().st_size - 10)  # inside its body: full length, wrong checksum
    with pytest.raises(IndexCorrupt, match=r"checksum mismatch in the record at byte .*focal index repair"):
        IndexStore(tmp_path, embedder)
    size = log.stat().st_size
    report = repair(tmp_path)
    assert report["action"] == "log cut before the damaged record"
    assert report["dropped_bytes"] == size - last and log.stat().st_size == last
    store = IndexStore(tmp_path, embedder)
    assert documents(store) == {k: v for k, v in expected.items() if k not in {d.id for d in MORE}}
    store.close()


def test_damage_the_snapshot_covers_is_noticed_at_start_and_nothing_is_lost(tmp_path, embedder):
    expected = written(tmp_path, embedder, close_with_snapshot=True)
    log = tmp_path / "wal.log"
    flip(log, 40)  # inside the first record, long since in the snapshot
    with pytest.raises(IndexCorrupt, match=r"checksum mismatch in the record at byte 0"):
        IndexStore(tmp_path, embedder)
    report = repair(tmp_path)
    assert report["action"] == "log written anew from the snapshot"
    store = IndexStore(tmp_path, embedder)
    assert documents(store) == expected
    assert store.search("wiki", "Which river flows through Paris?", 1)[0].document_id == "seine"
    store.close(snapshot=False)
    assert rebuild(tmp_path)["namespaces"]["wiki"]["documents"] == len(expected)


def test_the_log_is_fsynced_before_each_acknowledgement(tmp_path, embedder, monkeypatch):
    """SIGKILL keeps the page cache, so the crash test cannot see a missing fsync: record them."""
    events: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store = IndexStore(tmp_path, embedder, snapshot_every=100)
    assert events == [tmp_path.name]  # the new log's directory entry, before any write
    for document in RIVERS:
        events.clear()
        store.upsert("wiki", [document])
        assert events == ["wal.log"]  # fsynced, then acknowledged (returned)
    events.clear()
    store.delete("wiki", ["seine"])
    assert events == ["wal.log"]
    store.close(snapshot=False)


def test_a_store_opened_without_its_log_reports_stats_and_refuses_writes(tmp_path, embedder):
    expected = written(tmp_path, embedder, close_with_snapshot=True)
    store = IndexStore(tmp_path, embedder, open_log=False)  # as the repair opens it
    try:
        stats = store.stats()
        assert stats["namespaces"]["wiki"]["documents"] == len(expected) and stats["log_bytes"] == 0
        with pytest.raises(RuntimeError, match="opened without its log"):
            store.upsert("wiki", [Document("po", "The Po crosses the north of Italy.")])
        assert documents(store) == expected
    finally:
        store.close()
    reopened = IndexStore(tmp_path, embedder)  # the directory was released, and nothing was written
    assert documents(reopened) == expected
    reopened.close()
