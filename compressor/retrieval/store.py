"""The durable document index: namespaces of chunked, embedded documents with metadata.

Durability: every Upsert and Delete is one record in the write-ahead log (``wal.log``), fsynced
before the call returns; the record carries the vectors, so replaying it needs no embedder and
gives the same state. The FAISS indexes and the metadata are snapshotted now and then (every
``snapshot_every`` records, and on close) into ``snap-<seq>/``, with a manifest of SHA-256 sums;
``CURRENT`` names the live snapshot and is replaced atomically. On open: the snapshot is checked
and loaded, then the log records after it are replayed. Upsert replaces a document with the same
id, so a replayed or retried upsert never leaves a document twice.

A damaged snapshot is reported with its recovery (``focal index rebuild``: replay the whole log);
the log is the source of truth and is never truncated except for a torn, unacknowledged tail.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compressor.embedding import Embedder
from compressor.retrieval.chunker import Chunking
from compressor.retrieval.contract import (
    Document,
    Hit,
    Limits,
    check_embedder,
    check_ids,
    check_search,
    checked_namespace,
    chunked_documents,
    require_embedder,
)
from compressor.retrieval.errors import IndexCorrupt, NamespaceNotFound
from compressor.retrieval.vectors import IndexSpec, VectorIndex
from compressor.retrieval.wal import LogCorrupt, Record, WriteAheadLog, fsync_dir, scan, verify

log = logging.getLogger("focal")

@dataclass
class _Entry:
    metadata: dict[str, str]
    chunk_ids: list[int]


class Namespace:
    def __init__(self, name: str, dim: int, embedder: str, vectors: VectorIndex) -> None:
        self.name = name
        self.dim = dim
        self.embedder = embedder
        self.vectors = vectors
        self.documents: dict[str, _Entry] = {}
        self.chunks: dict[int, tuple[str, int, str]] = {}  # id -> (document id, ordinal, text)
        self.postings: dict[tuple[str, str], set[int]] = {}  # metadata (key, value) -> chunk ids

    def put(self, doc_id: str, metadata: dict[str, str], ids: list[int], texts: list[str]) -> None:
        self.documents[doc_id] = _Entry(metadata, ids)
        for ordinal, (chunk_id, text) in enumerate(zip(ids, texts)):
            self.chunks[chunk_id] = (doc_id, ordinal, text)
        for pair in metadata.items():
            self.postings.setdefault(pair, set()).update(ids)

    def drop(self, doc_id: str) -> list[int]:
        entry = self.documents.pop(doc_id, None)
        if entry is None:
            return []
        for chunk_id in entry.chunk_ids:
            del self.chunks[chunk_id]
        for pair in entry.metadata.items():
            self.postings[pair].difference_update(entry.chunk_ids)
            if not self.postings[pair]:
                del self.postings[pair]
        return entry.chunk_ids

    def allowed(self, where: dict[str, str]) -> np.ndarray:
        """Chunk ids whose document metadata has every ``key=value`` of ``where``."""
        sets = sorted((self.postings.get(pair, set()) for pair in where.items()), key=len)
        ids = set.intersection(*sets) if sets else set()
        return np.fromiter(ids, dtype=np.int64, count=len(ids))

    def state(self) -> dict:
        return {"documents": {d: [e.metadata, e.chunk_ids] for d, e in self.documents.items()},
                "chunks": {str(c): list(v) for c, v in self.chunks.items()}}

    def restore(self, state: dict) -> None:
        texts = {int(c): v for c, v in state["chunks"].items()}
        for doc_id, (metadata, ids) in state["documents"].items():
            self.put(doc_id, metadata, ids, [texts[i][2] for i in ids])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class IndexStore:
    """One data directory, opened by one process at a time (a lock file enforces it)."""

    def __init__(self, data_dir: str | Path, embedder: Embedder | None = None, spec: IndexSpec | None = None,
                 chunking: Chunking | None = None, limits: Limits | None = None, snapshot_every: int = 1000,
                 use_snapshot: bool = True, open_log: bool = True) -> None:
        """Open (or create) ``data_dir``: load the snapshot (unless ``use_snapshot`` is false), verify the
        checksum of every log record it covers, replay the records after it, and open the log for
        appending. Damage anywhere is ``IndexCorrupt`` naming the repair command. ``open_log`` false
        reads the snapshot alone, for the repair (the store then takes no writes)."""
        self.root = Path(data_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.embedder = embedder
        self.spec = spec or IndexSpec()
        self.chunking = chunking or Chunking()
        self.limits = limits or Limits()
        self.snapshot_every = snapshot_every
        self.namespaces: dict[str, Namespace] = {}
        self.seq = 0
        self.next_id = 0
        self.snapshot_seq = 0
        self._lock = threading.RLock()
        self._lock_file = self._acquire()
        try:
            wal_start = self._load_snapshot() if use_snapshot else 0
            self.snapshot_offset = wal_start
            if not open_log:
                return
            covered = verify(self.root / "wal.log", wal_start)
            self._replay(wal_start)
            self.wal = WriteAheadLog(self.root / "wal.log", start=self._replayed_to)
        except LogCorrupt as exc:
            self._lock_file.close()
            raise IndexCorrupt(f"{exc}. Acknowledged writes may be damaged; nothing was changed. Run `focal index "
                               f"repair --data-dir {self.root}`: it keeps every write the snapshot or the intact "
                               "log holds, and says what it could not keep") from exc
        except BaseException:
            self._lock_file.close()
            raise
        log.info("index log verified", extra={"fields": {"records_covered_by_snapshot": covered,
                                                         "log_bytes": self.wal.end}})
        if self.wal.torn_bytes:
            log.warning("index log: cut a torn, unacknowledged tail",
                        extra={"fields": {"bytes": self.wal.torn_bytes}})

    # ---- opening -------------------------------------------------------------------------------

    def _acquire(self):
        handle = (self.root / "LOCK").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise IndexCorrupt(f"data directory {self.root} is in use by another focal process (pid {owner}); "
                               "stop it, or use another --data-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle

    def _recovery(self, problem: str) -> IndexCorrupt:
        return IndexCorrupt(f"{problem}. The write-ahead log is the source of truth: rebuild the index from it "
                            f"with `focal index rebuild --data-dir {self.root}` (the damaged snapshot is replaced)")

    def _load_snapshot(self) -> int:
        current = self.root / "CURRENT"
        if not current.exists():
            return 0
        try:
            pointer = json.loads(current.read_text())
            folder = self.root / pointer["snapshot"]
            manifest_path = folder / "manifest.json"
            if _sha256(manifest_path) != pointer["manifest_sha256"]:
                raise self._recovery(f"{manifest_path} is corrupt or truncated (checksum mismatch)")
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError, KeyError) as exc:
            raise self._recovery(f"the snapshot named by {current} cannot be read ({exc})") from exc
        if manifest["spec"] != self.spec.describe():
            log.warning("index settings changed since the snapshot: rebuilding from the log",
                        extra={"fields": {"was": manifest["spec"], "now": self.spec.describe()}})
            return 0
        for name, entry in manifest["namespaces"].items():
            paths = {part: folder / entry[part]["file"] for part in ("index", "meta")}
            for part, path in paths.items():
                if not path.exists():
                    raise self._recovery(f"{path} is missing")
                if path.stat().st_size != entry[part]["bytes"] or _sha256(path) != entry[part]["sha256"]:
                    raise self._recovery(f"{path} is corrupt or truncated (size or checksum mismatch)")
            meta = json.loads(paths["meta"].read_text())
            try:
                vectors = VectorIndex.from_bytes(paths["index"].read_bytes(), entry["dim"], self.spec,
                                                 set(meta["tombstones"]))
            except (RuntimeError, ValueError) as exc:
                raise self._recovery(f"{paths['index']} cannot be read by FAISS ({exc})") from exc
            namespace = Namespace(name, entry["dim"], entry["embedder"], vectors)
            namespace.restore(meta)
            self.namespaces[name] = namespace
        self.seq = self.snapshot_seq = manifest["seq"]
        self.next_id = manifest["next_id"]
        return manifest["wal_offset"]

    def _replay(self, start: int) -> None:
        self._replayed_to = start
        replayed = 0
        for record in scan(self.root / "wal.log", start):
            if record.header["seq"] > self.seq:
                self._apply(record)
                replayed += 1
            self._replayed_to = record.end
        if replayed:
            log.info("index log replayed", extra={"fields": {"records": replayed, "seq": self.seq}})

    # ---- applying log records ------------------------------------------------------------------

    def _namespace_for_write(self, name: str, dim: int, embedder: str) -> Namespace:
        if name not in self.namespaces:
            self.namespaces[name] = Namespace(name, dim, embedder, VectorIndex(dim, self.spec))
        return self.namespaces[name]

    def _apply(self, record: Record) -> None:
        header = record.header
        namespace_name = header["ns"]
        if header["op"] == "upsert":
            namespace = self._namespace_for_write(namespace_name, header["dim"], header["embedder"])
            vectors = np.frombuffer(record.body, dtype=np.float32).reshape(-1, header["dim"])
            stale = [i for doc in header["docs"] for i in namespace.drop(doc["id"])]
            namespace.vectors.remove(np.array(stale, dtype=np.int64))
            next_id = header["first_id"]
            for doc in header["docs"]:
                ids = list(range(next_id, next_id + len(doc["chunks"])))
                namespace.put(doc["id"], doc["metadata"], ids, doc["chunks"])
                next_id += len(ids)
            namespace.vectors.add(np.arange(header["first_id"], next_id, dtype=np.int64), vectors)
            self.next_id = max(self.next_id, next_id)
        elif header["op"] == "delete":
            namespace = self.namespaces[namespace_name]
            stale = [i for doc_id in header["ids"] for i in namespace.drop(doc_id)]
            namespace.vectors.remove(np.array(stale, dtype=np.int64))
        self.seq = header["seq"]

    def _commit(self, header: dict, body: bytes = b"") -> None:
        """Log (fsync), then apply: the caller's acknowledgement follows a durable record."""
        header["seq"] = self.seq + 1
        self.wal.append(header, body)
        self._apply(Record(header, body, self.wal.end))
        if self.seq - self.snapshot_seq >= self.snapshot_every:
            self.snapshot()

    # ---- operations ----------------------------------------------------------------------------

    def _check_embedder(self, namespace: Namespace) -> None:
        check_embedder(namespace.name, namespace.embedder, namespace.dim, self.embedder)

    def upsert(self, namespace: str, documents: list[Document], progress: bool = False) -> tuple[int, int]:
        """Chunk, embed and store ``documents`` (replacing any with the same id). Returns
        (documents, chunks) written. Durable when it returns."""
        name = checked_namespace(namespace)
        chunked = chunked_documents(documents, self.limits, self.chunking)
        with self._lock:
            if name in self.namespaces:
                self._check_embedder(self.namespaces[name])
        embedder = require_embedder(self.embedder)
        vectors = embedder.embed([c for chunks in chunked for c in chunks], progress=progress)
        docs = [{"id": d.id, "metadata": dict(d.metadata), "chunks": c} for d, c in zip(documents, chunked)]
        with self._lock:
            if name in self.namespaces:
                self._check_embedder(self.namespaces[name])
            self._commit({"op": "upsert", "ns": name, "dim": embedder.dim, "embedder": embedder.name,
                          "first_id": self.next_id, "docs": docs}, vectors.tobytes())
        return len(documents), len(vectors)

    def delete(self, namespace: str, ids: list[str]) -> int:
        """Delete documents by id; returns how many existed. Durable when it returns."""
        name = checked_namespace(namespace)
        check_ids(ids)
        with self._lock:
            space = self._get(name)
            present = [i for i in dict.fromkeys(ids) if i in space.documents]
            if present:
                self._commit({"op": "delete", "ns": name, "ids": present})
            return len(present)

    def _get(self, name: str) -> Namespace:
        if name not in self.namespaces:
            raise NamespaceNotFound(name)
        return self.namespaces[name]

    def search(self, namespace: str, query: str, top_k: int, where: dict[str, str] | None = None) -> list[Hit]:
        name = checked_namespace(namespace)
        check_search(query, top_k, self.limits)
        with self._lock:
            self._check_embedder(self._get(name))
        vector = self.embedder.embed([query])
        with self._lock:
            space = self._get(name)
            self._check_embedder(space)
            allowed = space.allowed(where) if where else None
            scores, ids = space.vectors.search(vector, top_k, allowed)
            hits = []
            for score, chunk_id in zip(scores[0], ids[0]):
                if chunk_id < 0:
                    continue
                doc_id, ordinal, text = space.chunks[int(chunk_id)]
                hits.append(Hit(doc_id, ordinal, text, float(score), dict(space.documents[doc_id].metadata)))
            return hits

    def stats(self) -> dict:
        with self._lock:
            return {
                "embedder": self.embedder.name if self.embedder else "",
                "dim": self.embedder.dim if self.embedder else 0,
                "index": self.spec.describe(),
                "log_bytes": self.wal.end,
                "seq": self.seq,
                "snapshot_seq": self.snapshot_seq,
                "namespaces": {
                    name: {"documents": len(space.documents), "chunks": len(space.chunks), "dim": space.dim,
                           "embedder": space.embedder, "index_type": type(space.vectors.index).__name__,
                           "tombstones": len(space.vectors.tombstones)}
                    for name, space in sorted(self.namespaces.items())},
            }

    # ---- snapshots -----------------------------------------------------------------------------

    def snapshot(self) -> None:
        """Write the indexes and metadata as of now; the log keeps every record (rebuilds replay it)."""
        with self._lock:
            if self.seq == self.snapshot_seq and (self.root / "CURRENT").exists():
                return
            folder = self.root / f"snap-{self.seq:012d}"
            staging = self.root / f".staging-{self.seq:012d}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            entries = {}
            for number, (name, space) in enumerate(sorted(self.namespaces.items())):
                if space.vectors.needs_compaction():
                    space.vectors.compact()
                files = {"index": (f"ns-{number:04d}.faiss", space.vectors.to_bytes()),
                         "meta": (f"ns-{number:04d}.json",
                                  json.dumps({**space.state(), "tombstones": sorted(space.vectors.tombstones)})
                                  .encode())}
                entry = {"dim": space.dim, "embedder": space.embedder}
                for part, (file_name, data) in files.items():
                    _write_durably(staging / file_name, data)
                    entry[part] = {"file": file_name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                entries[name] = entry
            manifest = {"seq": self.seq, "next_id": self.next_id, "wal_offset": self.wal.end,
                        "spec": self.spec.describe(), "namespaces": entries}
            _write_durably(staging / "manifest.json", json.dumps(manifest, indent=1).encode())
            fsync_dir(staging)
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
            pointer = {"snapshot": folder.name, "manifest_sha256": _sha256(folder / "manifest.json")}
            _write_durably(self.root / "CURRENT.tmp", json.dumps(pointer).encode())
            (self.root / "CURRENT.tmp").replace(self.root / "CURRENT")
            fsync_dir(self.root)
            for old in self.root.glob("snap-*"):
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
            self.snapshot_seq = self.seq

    def close(self, snapshot: bool = True) -> None:
        with self._lock:
            if hasattr(self, "wal"):
                if snapshot:
                    self.snapshot()
                self.wal.close()
            self._lock_file.close()


def rebuild(data_dir: str | Path, spec: IndexSpec | None = None) -> dict:
    """Replay the whole log into fresh indexes and write a new snapshot (the recovery from a damaged one)."""
    store = IndexStore(data_dir, None, spec, use_snapshot=False)
    try:
        for stale in (*store.root.glob("snap-*"), *store.root.glob(".staging-*")):
            shutil.rmtree(stale, ignore_errors=True)
        (store.root / "CURRENT").unlink(missing_ok=True)
        store.snapshot()
        return store.stats()
    finally:
        store.close(snapshot=False)
