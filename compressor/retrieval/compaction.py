"""Log compaction: the write-ahead log rewritten as the live documents, so that it stops holding every
write ever made (replaced and deleted documents, vectors included).

``IndexStore.compact_log`` runs these steps; a crash after any of them loses nothing:

1. A snapshot is taken: the live set as of sequence number S, in checked files.
2. ``wal-<S>.log`` is written from that snapshot's files alone (``write_base_log``; the running store
   is not touched): "base" records holding runs of documents with their vectors, fsynced. Dying
   here leaves a file no pointer names; the next open deletes it.
3. Under the store's lock: the records written to the old log since the snapshot are copied to the
   new log's end (fsynced), ``CURRENT`` is switched to (snapshot S, the new log, the offset where
   its base records end), and the store appends to the new log from then on. Dying before the
   switch leaves the old log live and the new one unnamed; after it, the reverse.
4. The old log is deleted.

Base records all carry sequence number S and a ``base`` flag: replaying the log from its start
(a rebuild) applies every one of them, then the records after S.
"""

from __future__ import annotations

from pathlib import Path

from compressor.retrieval.errors import IndexCorrupt
from compressor.retrieval.snapshot import snapshot_documents
from compressor.retrieval.wal import WriteAheadLog

CHUNKS_PER_RECORD = 1024


def compacted_name(seq: int) -> str:
    return f"wal-{seq:012d}.log"


def write_base_log(path: Path, folder: Path, manifest: dict) -> int:
    """Write ``path`` as base records of the snapshot in ``folder``; returns the byte offset where they end."""
    seq, next_id = manifest["seq"], manifest["next_id"]
    log = WriteAheadLog(path)
    try:
        for name, entry, documents, vectors_of in snapshot_documents(folder, manifest):
            run: list[list] = []

            def flush(run: list[list] = run, name: str = name, entry: dict = entry, vectors_of=vectors_of) -> None:
                if not run:
                    return
                ids = [i for document in run for i in document[2]]
                log.append({"op": "upsert", "ns": name, "dim": entry["dim"], "embedder": entry["embedder"],
                            "first_id": ids[0], "seq": seq, "base": True, "next_id": next_id,
                            "docs": [{"id": d[0], "metadata": d[1], "chunks": d[3]} for d in run]},
                           vectors_of(ids).tobytes())
                run.clear()

            for document in documents:
                doc_id, _, chunk_ids, _ = document
                if chunk_ids != list(range(chunk_ids[0], chunk_ids[0] + len(chunk_ids))):
                    raise IndexCorrupt(f"document {doc_id!r} of namespace {name!r} has scattered chunk ids")
                expected = run[-1][2][-1] + 1 if run else chunk_ids[0]
                if chunk_ids[0] != expected or sum(len(d[2]) for d in run) + len(chunk_ids) > CHUNKS_PER_RECORD:
                    flush()
                run.append(document)
            flush()
        return log.end
    finally:
        log.close()


def copy_tail(source: Path, start: int, end: int, target: WriteAheadLog) -> None:
    """Append the whole records of ``source`` between bytes ``start`` and ``end`` to ``target`` as they
    are (a record holds no offsets), with one fsync."""
    with source.open("rb") as handle:
        handle.seek(start)
        target.append_records(handle.read(end - start))
