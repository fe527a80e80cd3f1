"""The embedded retrieval index on a real data directory: chunking, its internals on replace,
restart, FAISS index types, the write-ahead log's torn tail and damaged files. The behaviour both
backends share (upsert/search/filter/delete, namespaces, bad input, an embedder change) is tested
on both in ``test_retrieval_backends.py``."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from compressor.embedding import Embedder
from compressor.retrieval.chunker import Chunking, chunk_text
from compressor.retrieval.errors import IndexCorrupt
from compressor.retrieval.store import Document, IndexStore, rebuild
from compressor.retrieval.vectors import IndexSpec, VectorIndex
from compressor.retrieval.wal import LogCorrupt, WriteAheadLog, scan

EN_RIVER = {"lang": "en", "kind": "river"}
RIVERS = [
    Document("seine", "The Seine flows through Paris and reaches the sea at Le Havre.", EN_RIVER),
    Document("danube", "The Danube flows through Vienna, Bratislava and Budapest.", EN_RIVER),
    Document("tiber", "Der Tiber fließt durch Rom.", {"lang": "de", "kind": "river"}),
    Document("alps", "Mont Blanc is the highest mountain of the Alps.", {"lang": "en", "kind": "mountain"}),
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture
def store(tmp_path: Path, embedder: Embedder):
    opened = IndexStore(tmp_path / "data", embedder, snapshot_every=3)
    yield opened
    opened.close(snapshot=False)


def test_chunks_keep_sentences_and_code_blocks_whole() -> None:
    code = "```python\ndef area(r):\n    return 3.14159 * r * r\n```"
    text = "First sentence here. " * 6 + "\n\n" + code + "\n\nA closing sentence about the code above."
    chunks = chunk_text(text, Chunking(max_chars=140))
    assert all(len(c) <= 140 for c in chunks)
    assert sum(code in c for c in chunks) == 1  # the fenced block fits a chunk: never split
    assert all(c.endswith((".", "```")) for c in chunks)  # cut between sentences, not inside them
    joined = " ".join(chunks)
    assert joined.count("First sentence here.") == 6 and "closing sentence" in joined


def test_chunks_cut_overlong_units_and_overlap() -> None:
    chunks = chunk_text("word " * 100, Chunking(max_chars=64))
    assert all(len(c) <= 64 for c in chunks) and " ".join(chunks).split() == ["word"] * 100
    sentences = " ".join(f"Sentence number {i} is here." for i in range(10))
    overlapped = chunk_text(sentences, Chunking(max_chars=80, overlap=1))
    for before, after in itertools.pairwise(overlapped):
        assert after.startswith(before.split(". ")[-1].rstrip("."))
    assert chunk_text("  \n\n ") == []


def test_upsert_replaces_a_document_with_the_same_id(store: IndexStore) -> None:
    store.upsert("wiki", RIVERS)
    store.upsert("wiki", [Document("seine", "The Seine is a river in France. " * 80, {"lang": "fr"})])
    space = store.namespaces["wiki"]
    assert len(space.documents) == 4 and len(space.vectors) == len(space.chunks)
    assert len(space.documents["seine"].chunk_ids) > 1
    assert store.search("wiki", "river", 10, {"lang": "en", "kind": "river"})[0].document_id == "danube"


def test_restart_replays_the_log_and_loads_snapshots(tmp_path: Path, embedder: Embedder) -> None:
    store = IndexStore(tmp_path, embedder, snapshot_every=2)
    for doc in RIVERS:
        store.upsert("wiki", [doc])
    store.settle()  # the snapshot runs in the background
    store.delete("wiki", ["alps"])
    snapshot_seq, seq = store.snapshot_seq, store.seq
    assert 0 < snapshot_seq < seq  # the last write is only in the log
    store.close(snapshot=False)  # as after a crash: no final snapshot
    reopened = IndexStore(tmp_path, embedder)
    assert sorted(reopened.namespaces["wiki"].documents) == ["danube", "seine", "tiber"]
    assert reopened.seq == seq and len(reopened.namespaces["wiki"].vectors) == 3
    assert reopened.search("wiki", "Paris", 1)[0].document_id == "seine"
    reopened.close()
    assert IndexStore(tmp_path, embedder).snapshot_seq == seq


def test_a_data_dir_has_one_owner(tmp_path: Path, embedder: Embedder) -> None:
    store = IndexStore(tmp_path, embedder)
    with pytest.raises(IndexCorrupt, match="in use by another focal process"):
        IndexStore(tmp_path, embedder)
    store.close()


def test_torn_log_tail_is_cut_and_mid_log_damage_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    log = WriteAheadLog(path)
    for seq in range(1, 4):
        log.append({"seq": seq}, b"x" * 100)
    log.close()
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # the process died inside the last write
    log = WriteAheadLog(path)
    assert log.torn_bytes > 0 and [r.header["seq"] for r in scan(path)] == [1, 2]
    log.append({"seq": 3})
    log.close()
    assert [r.header["seq"] for r in scan(path)] == [1, 2, 3]
    damaged = bytearray(path.read_bytes())
    damaged[30] ^= 0xFF  # inside the first record
    path.write_bytes(bytes(damaged))
    with pytest.raises(LogCorrupt, match="checksum mismatch in the record at byte 0"):
        list(scan(path))


def test_damaged_snapshot_is_detected_and_rebuilt_from_the_log(tmp_path: Path, embedder: Embedder) -> None:
    store = IndexStore(tmp_path, embedder)
    store.upsert("wiki", RIVERS)
    store.close()
    vectors_file = next(tmp_path.glob("snap-*/ns-0000.vectors"))
    vectors_file.write_bytes(vectors_file.read_bytes()[:-16])  # truncated
    with pytest.raises(IndexCorrupt, match=r"ns-0000.vectors is corrupt or truncated.*focal index rebuild --data-dir"):
        IndexStore(tmp_path, embedder)
    stats = rebuild(tmp_path)
    assert stats["namespaces"]["wiki"]["documents"] == 4
    reopened = IndexStore(tmp_path, embedder)
    assert reopened.search("wiki", "Paris", 1)[0].document_id == "seine"
    reopened.close()
    current = json.loads((tmp_path / "CURRENT").read_text())
    manifest = tmp_path / current["snapshot"] / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"seq"', '"sequence"'))
    with pytest.raises(IndexCorrupt, match=r"manifest\.json is corrupt"):
        IndexStore(tmp_path, embedder)


@pytest.mark.parametrize("spec", [IndexSpec("flat"), IndexSpec("ivf", nlist=8, nprobe=8), IndexSpec("hnsw", m=8)])
def test_index_types_find_the_nearest_and_survive_a_restart(tmp_path: Path, spec: IndexSpec) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((600, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(600, dtype=np.int64) * 5
    index = VectorIndex(16, spec)
    index.add(ids[:300], vectors[:300])
    index.add(ids[300:], vectors[300:])  # ivf trains on crossing 39 x nlist
    assert type(index.index).__name__ == ("IndexIVFFlat" if spec.kind == "ivf" else "IndexIDMap2")
    index.remove(ids[:100])
    assert len(index) == 500
    exact = np.argsort(-(vectors[100:] @ vectors[150]))[:5] * 5 + 500
    _scores, found = index.search(vectors[150:151], 5)
    assert found[0][0] == 750 and len(set(found[0]) & set(exact)) >= 4
    assert not set(found[0]) & set(ids[:100])
    allowed = ids[[120, 400, 599]]
    assert sorted(index.search(vectors[150:151], 5, allowed)[1][0][:3]) == sorted(allowed)
    restored = VectorIndex.from_bytes(index.to_bytes(), 16, spec, set(index.tombstones))
    assert (restored.search(vectors[150:151], 5)[1] == found).all()


def test_cli_adds_searches_and_rebuilds(tmp_path: Path, capsys) -> None:
    from compressor.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"id": d.id, "text": d.text, "metadata": d.metadata}) for d in RIVERS)
                      + "\n" + json.dumps({"text": RIVERS[0].text}) + "\n")
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n\nThe Rhine flows through Basel, Strasbourg and Cologne.\n")
    data = str(tmp_path / "data")
    assert main(["index", "add", str(corpus), str(notes), "--data-dir", data, "--namespace", "wiki"]) == 0
    assert "6 documents (0 repeated ids merged), 6 chunks" in capsys.readouterr().err
    assert main(["index", "search", "Which river flows through Cologne?", "--data-dir", data, "--namespace", "wiki",
                 "--top-k", "2"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert hits[0]["id"] == f"{notes}#0" and hits[0]["metadata"] == {"path": str(notes)} and len(hits) == 2
    assert main(["index", "search", "river", "--data-dir", data, "--namespace", "wiki", "--filter", "lang=de"]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == ["tiber#0"]
    assert main(["index", "search", "river", "--data-dir", data, "--namespace", "nope"]) == 2
    assert "'nope' does not exist" in capsys.readouterr().err
    assert main(["index", "rebuild", "--data-dir", data]) == 0
    assert json.loads(capsys.readouterr().out)["namespaces"]["wiki"]["documents"] == 6
    assert main(["index", "stats", "--data-dir", data]) == 0
    assert json.loads(capsys.readouterr().out)["namespaces"]["wiki"]["chunks"] == 6
