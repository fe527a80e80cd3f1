"""The durable document index: namespaces of chunked, embedded documents with metadata.

Durability: every Upsert and Delete is one record in the write-ahead log, fsynced before the call
returns and before searches can see it (writes take turns on their own lock; the fsync does not hold the
lock searches take); the record carries the vectors, so replaying it needs no embedder and gives the
same state. Snapshots (``snapshot.py``) write the indexes and metadata beside the running store: every
``snapshot_every`` records in the background, by a worker process that rebuilds the store from the files
up to where the log stood (``snapshot_process.py``; the store's lock is held only to note that point),
and on close in-process, holding it per slice of rows; ``CURRENT`` names the live snapshot and the log,
and is replaced atomically. On open: the snapshot is checked and loaded, then the log records after it
are replayed. A search of a large exact namespace holds the lock one slice of rows at a time
(``scan.py``). Upsert replaces a document with the same id, so a replayed or retried upsert never leaves
a document twice.

The log stays small: when it outgrows the live data (``compact_ratio``), it is rewritten as the
live documents (``compaction.py``), crash-safe at every step. A damaged snapshot is reported with
its recovery (``focal index rebuild``: replay the whole log); the log is the source of truth and
is only ever cut at a torn, unacknowledged tail, or replaced by its compacted equal.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from compressor.embedding import Embedder
from compressor.retrieval import heap, snapshot_process
from compressor.retrieval.chunker import Chunking
from compressor.retrieval.compaction import compacted_name, copy_tail, write_base_log
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
from compressor.retrieval.namespace import Namespace
from compressor.retrieval.scan import search_in_slices
from compressor.retrieval.snapshot import (
    FORMAT,
    Capture,
    SnapshotDamaged,
    capture,
    data_bytes,
    live_log_name,
    load_namespaces,
    publish,
    read_manifest,
    read_pointer,
    staging_folder,
    switch,
    write_staging,
)
from compressor.retrieval.snapshot import write as write_snapshot
from compressor.retrieval.vectors import SEARCH_SLICE_ROWS, IndexSpec, VectorIndex
from compressor.retrieval.wal import LogCorrupt, Record, WriteAheadLog, fsync_dir, scan, verify

log = logging.getLogger("focal")

MAINTENANCE_NICENESS = 10  # the background compaction thread's priority, below the request threads (0)


class IndexStore:
    """One data directory, opened by one process at a time (a lock file enforces it)."""

    def __init__(self, data_dir: str | Path, embedder: Embedder | None = None, spec: IndexSpec | None = None,
                 chunking: Chunking | None = None, limits: Limits | None = None, snapshot_every: int = 1000,
                 use_snapshot: bool = True, open_log: bool = True, compact_ratio: float = 2.0,
                 as_of_log_end: int | None = None) -> None:
        """Open (or create) ``data_dir``: load the snapshot (unless ``use_snapshot`` is false), verify the
        checksum of every log record it covers, replay the records after it, and open the log for
        appending. Damage anywhere is ``IndexCorrupt`` naming the repair command. ``open_log`` false
        reads the snapshot alone, for the repair (the store then takes no writes). After a background
        snapshot the log is compacted when it holds more than ``compact_ratio`` times the snapshot's
        bytes (0: never on its own; ``compact_log`` still works). ``as_of_log_end`` reads the state as of
        that byte of the live log without taking the directory (the snapshot worker's view, read while
        the owner writes on; it takes no writes)."""
        self.root = Path(data_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.embedder = embedder
        self.spec = spec or IndexSpec()
        self.chunking = chunking or Chunking()
        self.limits = limits or Limits()
        self.snapshot_every = snapshot_every
        self.compact_ratio = compact_ratio
        self.namespaces: dict[str, Namespace] = {}
        self.seq = 0
        self.next_id = 0
        self.snapshot_seq = 0
        self.snapshot_bytes = 0
        self.last_snapshot: dict = {}
        self._lock = threading.RLock()  # the in-memory state (and the log's name and applied end)
        self._writing = threading.Lock()  # one write at a time, in log order; taken before ``_lock``
        self._maintaining = threading.Lock()  # one snapshot or compaction at a time
        self._maintainer: threading.Thread | None = None
        self.snapshot_worker: subprocess.Popen | None = None  # while a background snapshot is being written
        self._worker_guard = threading.Lock()  # ``snapshot_worker`` and ``_closing``: close stops a running worker
        self._closing = False
        self.wal: WriteAheadLog | None = None  # None: opened without the log (snapshot only, or as of a byte)
        self._lock_file = self._acquire() if as_of_log_end is None else None
        try:
            try:
                self.wal_name = live_log_name(self.root)
            except SnapshotDamaged as exc:
                raise self._recovery(str(exc)) from exc
            wal_start = self._load_snapshot() if use_snapshot else 0
            self.snapshot_offset = wal_start
            if as_of_log_end is not None:
                self._replay(wal_start, as_of_log_end)
                self.applied_end = as_of_log_end
                return
            if not open_log:
                return
            self._drop_orphans()
            covered = verify(self.root / self.wal_name, wal_start)
            self._replay(wal_start)
            self.wal = WriteAheadLog(self.root / self.wal_name, start=self._replayed_to)
            self.applied_end = self.wal.end  # the log's end as far as the in-memory state has applied it
            heap.settle()
        except LogCorrupt as exc:
            self._release()
            raise IndexCorrupt(f"{exc}. Acknowledged writes may be damaged; nothing was changed. Run `focal index "
                               f"repair --data-dir {self.root}`: it keeps every write the snapshot or the intact "
                               "log holds, and says what it could not keep") from exc
        except BaseException:
            self._release()
            raise
        log.info("index log verified", extra={"fields": {"log": self.wal_name, "records_covered_by_snapshot": covered,
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

    def _release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()

    def _recovery(self, problem: str) -> IndexCorrupt:
        return IndexCorrupt(f"{problem}. The write-ahead log is the source of truth: rebuild the index from it "
                            f"with `focal index rebuild --data-dir {self.root}` (the damaged snapshot is replaced)")

    def _load_snapshot(self) -> int:
        try:
            pointer = read_pointer(self.root)
            if pointer is None:
                return 0
            folder, manifest = read_manifest(self.root, pointer)
            if manifest.get("format") != FORMAT or manifest["spec"] != self.spec.describe():
                log.warning("the snapshot was written by another version or with other index settings: "
                            "rebuilding from the log", extra={"fields": {"format": manifest.get("format"),
                                                                          "was": manifest["spec"],
                                                                          "now": self.spec.describe()}})
                return 0
            self.namespaces = load_namespaces(folder, manifest, self.spec)
        except SnapshotDamaged as exc:
            raise self._recovery(str(exc)) from exc
        self.seq = self.snapshot_seq = manifest["seq"]
        self.next_id = manifest["next_id"]
        self.snapshot_bytes = data_bytes(manifest)
        return pointer["wal_offset"]

    def _drop_orphans(self) -> None:
        """Delete what a crash mid-snapshot or mid-compaction left behind: staging folders, and logs
        that ``CURRENT`` does not name (a compacted log not yet switched in, or the old one after)."""
        for staging in self.root.glob(".staging-*"):
            shutil.rmtree(staging, ignore_errors=True)
        try:
            if read_pointer(self.root) is None:
                return
        except SnapshotDamaged:
            return
        for path in self.root.glob("wal*.log"):
            if path.name != self.wal_name:
                log.info("index: deleting a log no snapshot names (left by an interrupted compaction)",
                         extra={"fields": {"file": path.name}})
                path.unlink()

    def _replay(self, start: int, end: int | None = None) -> None:
        """Apply the log's records from byte ``start`` (to byte ``end``, which must be a record's end)."""
        self._replayed_to = start
        replayed = 0
        for record in scan(self.root / self.wal_name, start):
            if end is not None and record.end > end:
                break
            if record.header["seq"] > self.seq or record.header.get("base"):
                self._apply(record)
                replayed += 1
            self._replayed_to = record.end
        if end is not None and self._replayed_to != end:
            raise LogCorrupt(f"{self.root / self.wal_name}: no record ends at byte {end}", self._replayed_to)
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
            self.next_id = max(self.next_id, next_id, header.get("next_id", 0))
        elif header["op"] == "delete":
            namespace = self.namespaces[namespace_name]
            stale = [i for doc_id in header["ids"] for i in namespace.drop(doc_id)]
            namespace.vectors.remove(np.array(stale, dtype=np.int64))
        self.seq = header["seq"]

    def _commit(self, header: dict, body: bytes = b"") -> None:
        """Log (fsync), then apply: the caller's acknowledgement follows a durable record. The caller
        holds ``_writing`` (not ``_lock``) and made ``header`` from the state under ``_lock``; no other
        write can come between. The fsync runs outside ``_lock``, so searches and snapshot slices go
        on meanwhile, and they see the write only once it is durable."""
        if self.wal is None:
            raise RuntimeError(f"the index at {self.root} was opened without its log (snapshot only, or as of a "
                               "byte of it) and takes no writes")
        self.wal.append(header, body)
        end = self.wal.end
        with self._lock:
            self._apply(Record(header, body, end))
            self.applied_end = end
            if self.seq - self.snapshot_seq >= self.snapshot_every:
                self.maintain_in_background()

    def maintain_in_background(self) -> None:
        """Start a snapshot (then a log compaction if the log has outgrown the live data) in a background
        thread, unless one is running; ``settle`` waits for it. On Linux the snapshot is written by a
        worker process from the files (``snapshot_process.py``), so it shares neither the interpreter
        nor the store's lock with the requests that go on."""
        with self._lock:
            if self._maintainer is not None and self._maintainer.is_alive():
                return
            self._maintainer = threading.Thread(target=self._maintain, name="focal-index-maintenance", daemon=True)
            self._maintainer.start()

    def _maintain(self) -> None:
        try:
            with self._maintaining:
                if snapshot_process.can_run():
                    self._snapshot_by_worker()
                else:
                    self._snapshot()
            if self._closing:
                return
            # Below the threads that serve requests: on a machine with few cores the rewrite yields to them.
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MAINTENANCE_NICENESS)
            if self.compact_ratio and self.wal.end > self.compact_ratio * max(self.snapshot_bytes, 1 << 20):
                self.compact_log()
        except Exception:
            log.exception("index maintenance failed; the log still holds every write")

    def _snapshot_by_worker(self) -> None:
        """Note where the store stands (under the lock), let the worker write that picture's staging
        folder from the files, and publish it once the worker has finished."""
        with self._lock:
            started = time.perf_counter()
            if not self._ready_for_snapshot():
                return
            picture = snapshot_process.Picture(self.seq, self.wal_name, self.applied_end)
            held = time.perf_counter() - started
        with self._worker_guard:
            if self._closing:
                return
            self.snapshot_worker = snapshot_process.start(self.root, self.spec, picture)
        try:
            report = snapshot_process.wait(self.snapshot_worker)
        except snapshot_process.WorkerFailed:
            shutil.rmtree(staging_folder(self.root, picture.seq), ignore_errors=True)
            if self._closing:
                log.info("index: the background snapshot was stopped, the store is closing")
                return
            raise
        finally:
            self.snapshot_worker = None
        manifest = publish(self.root, picture.seq, picture.log_name, picture.log_end)
        self._published(picture.seq, manifest, time.perf_counter() - started, held, by_worker=True,
                        worker_peak_rss_bytes=report["peak_rss_bytes"])

    def write_staging_snapshot(self) -> bool:
        """Write the snapshot of the state as it is into its staging folder, for the owner to publish
        (the worker's job); False when the live snapshot is as new."""
        taken = self._capture()
        if taken is None:
            return False
        write_staging(self.root, taken[0], self.spec, self._lock, [])
        return True

    def settle(self) -> None:
        """Wait for a background snapshot or compaction to finish."""
        maintainer = self._maintainer
        if maintainer is not None:
            maintainer.join()

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
        with self._writing:
            with self._lock:
                if name in self.namespaces:
                    self._check_embedder(self.namespaces[name])
                header = {"op": "upsert", "ns": name, "dim": embedder.dim, "embedder": embedder.name,
                          "first_id": self.next_id, "docs": docs, "seq": self.seq + 1}
            self._commit(header, vectors.tobytes())
        return len(documents), len(vectors)

    def delete(self, namespace: str, ids: list[str]) -> int:
        """Delete documents by id; returns how many existed. Durable when it returns."""
        name = checked_namespace(namespace)
        check_ids(ids)
        with self._writing:
            with self._lock:
                space = self._get(name)
                present = [i for i in dict.fromkeys(ids) if i in space.documents]
            if present:
                self._commit({"op": "delete", "ns": name, "ids": present, "seq": self.seq + 1})
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
            vectors, index = space.vectors, space.vectors.index
            sliced = not where and index.ntotal > SEARCH_SLICE_ROWS and vectors.scans_rows()
        if sliced:
            hits = search_in_slices(
                self._lock, lambda: self.namespaces.get(name) is space and space.vectors is vectors
                and vectors.index is index, vectors, vector, top_k, SEARCH_SLICE_ROWS, space.chunks.__contains__,
                lambda best: self._hits(space, best))
            if hits is not None:
                return hits
        with self._lock:  # one search under the lock: filtered, graph or IVF indexes, or the index changed
            space = self._get(name)
            self._check_embedder(space)
            allowed = space.allowed(where) if where else None
            scores, ids = space.vectors.search(vector, top_k, allowed)
            return self._hits(space, [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0])

    @staticmethod
    def _hits(space: Namespace, best: list[tuple[float, int]]) -> list[Hit]:
        hits = []
        for score, chunk_id in best:
            doc_id, ordinal, text = space.chunks[chunk_id]
            hits.append(Hit(doc_id, ordinal, text, score, dict(space.documents[doc_id].metadata)))
        return hits

    def stats(self) -> dict:
        with self._lock:
            return {
                "embedder": self.embedder.name if self.embedder else "",
                "dim": self.embedder.dim if self.embedder else 0,
                "index": self.spec.describe(),
                "log": self.wal_name,
                "log_bytes": self.wal.end if self.wal is not None else 0,
                "snapshot_bytes": self.snapshot_bytes,
                "last_snapshot": self.last_snapshot,
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
        """Write the indexes and metadata as of now, holding the lock only to take the picture and
        per slice of rows; one snapshot or compaction runs at a time."""
        with self._maintaining:
            self._snapshot()

    def _snapshot(self) -> None:
        with self._lock:
            taken = self._capture()
        if taken is not None:
            self._write_snapshot(*taken)

    def _ready_for_snapshot(self) -> bool:
        """False when the live snapshot is as new; else compact the namespaces' vectors that need it
        first (the caller holds the lock)."""
        if self.seq == self.snapshot_seq and (self.root / "CURRENT").exists():
            return False
        for space in self.namespaces.values():
            if space.vectors.needs_compaction():
                space.vectors.compact()
        return True

    def _capture(self) -> tuple[Capture, float] | None:
        """The picture a snapshot writes, and the seconds taking it held the lock (which the caller
        holds); None when the live snapshot is as new."""
        started = time.perf_counter()
        if not self._ready_for_snapshot():
            return None
        return capture(self.namespaces, self.seq, self.next_id, self.wal_name, self.applied_end), \
            time.perf_counter() - started

    def _write_snapshot(self, taken: Capture, capture_seconds: float) -> None:
        started = time.perf_counter()
        holds = [capture_seconds]
        manifest = write_snapshot(self.root, taken, self.spec, self._lock, holds)
        self._published(taken.seq, manifest, time.perf_counter() - started + capture_seconds, max(holds),
                        by_worker=False, capture_ms=round(capture_seconds * 1000, 2))

    def _published(self, seq: int, manifest: dict, seconds: float, longest_hold: float, by_worker: bool,
                   **details: float) -> None:
        """Record and log the snapshot as of ``seq`` now live: its size, how long it took and held the lock,
        and ``details`` (the worker's peak memory, or the in-process capture's lock hold)."""
        self.snapshot_bytes = data_bytes(manifest)
        self.snapshot_seq = seq
        self.last_snapshot = {"seq": seq, "seconds": round(seconds, 3),
                              "longest_lock_hold_ms": round(longest_hold * 1000, 2), "by_worker": by_worker,
                              **details}
        log.info("index snapshot written", extra={"fields": {**self.last_snapshot, "bytes": self.snapshot_bytes}})
        heap.settle()

    def compact_log(self, step: Callable[[str], None] | None = None) -> None:
        """Rewrite the log as the live documents (see ``compaction.py``). ``step`` is called after each
        step ("written", "switched", "dropped"), for the tests that kill the process there."""
        with self._maintaining:
            self._snapshot()
            pointer = read_pointer(self.root)
            folder, manifest = read_manifest(self.root, pointer)
            name = compacted_name(manifest["seq"])
            if name == self.wal_name:
                return  # compacted at this point already, nothing written since
            path = self.root / name
            base_end = write_base_log(path, folder, manifest)
            if step:
                step("written")
            with self._writing, self._lock:
                compacted = WriteAheadLog(path, start=base_end)
                old = self.root / self.wal_name
                copy_tail(old, pointer["wal_offset"], self.wal.end, compacted)
                switch(self.root, {**pointer, "wal": name, "wal_offset": base_end})
                self.wal.close()
                self.wal, self.wal_name = compacted, name
                self.applied_end = compacted.end
                if step:
                    step("switched")
            old.unlink()
            fsync_dir(self.root)
            log.info("index log compacted", extra={"fields": {"log": name, "log_bytes": compacted.end}})
            if step:
                step("dropped")

    def close(self, snapshot: bool = True) -> None:
        """Wait for background maintenance, take a last snapshot (unless told not to), release the directory.
        A snapshot worker still running is stopped rather than waited for: under load it can take minutes,
        and the closing snapshot (or, without one, the log) covers what it would have written."""
        with self._worker_guard:
            self._closing = True
            if self.snapshot_worker is not None:
                self.snapshot_worker.kill()
        self.settle()
        if snapshot and self.wal is not None:
            self.snapshot()
        with self._writing, self._lock:
            if self.wal is not None:
                self.wal.close()
            self._release()
        heap.release()


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
