"""Snapshots of the embedded store, written while it keeps taking writes and searches.

A snapshot is the store as of one log sequence number: ``snap-<seq>/`` holds per namespace its
documents (``ns-<n>.jsonl``: first the tombstones, then one document per line) and its vectors,
and ``manifest.json`` lists every file with its size and SHA-256. ``CURRENT`` names the live
snapshot, the log it belongs to and the byte offset in that log where the snapshot ends; it is
replaced atomically, so a crash leaves either the old picture or the new one.

In the background a worker process rebuilds the store from the files up to where the log stood and
writes the staging folder (``snapshot_process.py``); the store publishes it when the worker is done.
In-process (on close, on rebuild, and in the worker), writing one holds the store's lock only to
take a ``Capture``: the sequence number, a shallow copy of each namespace's documents (entries are
never changed in place) and its tombstones. A flat index only grows at its end until it is
compacted, so its rows are then copied a slice at a time, each slice under the lock, and written
with the lock released (``ns-<n>.ids`` and ``ns-<n>.vectors``, raw int64 and float32). A graph
(HNSW) or trained IVF index changes in place, so it is serialized under the lock as a whole
(``ns-<n>.faiss``). Documents are encoded a batch at a time, so the encoder never holds the
interpreter for long either.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from compressor.retrieval.namespace import Entry, Namespace
from compressor.retrieval.vectors import IndexSpec, VectorIndex, stored_rows
from compressor.retrieval.wal import fsync_dir

FORMAT = 2
SLICE_ROWS = 2048  # rows copied per hold of the store's lock (3 MiB at 384 dimensions)
DOCUMENTS_PER_ENCODE = 1000
SYNC_BYTES = 8 << 20
FIRST_LOG = "wal.log"


class SnapshotDamaged(Exception):
    """The snapshot named by ``CURRENT`` cannot be trusted; the message says which file and why."""


@dataclass
class SpaceCapture:
    name: str
    dim: int
    embedder: str
    documents: dict[str, Entry]
    tombstones: set[int]
    index: faiss.Index  # append-only: read a slice at a time under the lock; otherwise unused
    rows: int  # append-only: how many rows the snapshot takes
    serialized: bytes | None  # not append-only: the whole index, serialized under the lock


@dataclass
class Capture:
    seq: int
    next_id: int
    log_name: str
    log_offset: int
    spaces: list[SpaceCapture]


def capture(namespaces: dict[str, Namespace], seq: int, next_id: int, log_name: str, log_offset: int) -> Capture:
    """The store as of now; the caller holds the store's lock. Costs pointer copies, except for an
    index that is not append-only (serialized here)."""
    spaces = []
    for name, space in sorted(namespaces.items()):
        vectors = space.vectors
        append_only = vectors.append_only
        spaces.append(SpaceCapture(name, space.dim, space.embedder, dict(space.documents), set(vectors.tombstones),
                                   vectors.index, vectors.index.ntotal if append_only else 0,
                                   None if append_only else vectors.to_bytes()))
    return Capture(seq, next_id, log_name, log_offset, spaces)


class _File:
    """A snapshot file written in pieces; its size and SHA-256 kept as it goes, flushed to disk every
    ``SYNC_BYTES`` and fsynced on close. Flushing as it goes keeps the dirty pages few: the log's
    fsync of a concurrent write would otherwise wait for the file system to write them all first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = path.open("wb")
        self.digest = hashlib.sha256()
        self.bytes = 0
        self.unsynced = 0

    def write(self, data: bytes | memoryview) -> None:
        self.handle.write(data)
        self.digest.update(data)
        size = memoryview(data).nbytes
        self.bytes += size
        self.unsynced += size
        if self.unsynced >= SYNC_BYTES:
            self.handle.flush()
            os.fdatasync(self.handle.fileno())
            self.unsynced = 0

    def close(self) -> dict:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        return {"file": self.path.name, "bytes": self.bytes, "sha256": self.digest.hexdigest()}


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


def _write_space(space: SpaceCapture, number: int, folder: Path, lock: threading.RLock, holds: list[float]) -> dict:
    entry: dict = {"dim": space.dim, "embedder": space.embedder, "files": {}}
    meta = _File(folder / f"ns-{number:04d}.jsonl")
    meta.write(json.dumps({"tombstones": sorted(space.tombstones)}).encode() + b"\n")
    # A batch at a time, never a list of every document: a million new objects at once would set off
    # full garbage collections, which hold the interpreter for seconds with a million documents stored.
    documents = iter(space.documents.items())
    while batch := list(itertools.islice(documents, DOCUMENTS_PER_ENCODE)):
        lines = [json.dumps([doc_id, e.metadata, e.chunk_ids, e.texts], ensure_ascii=False) for doc_id, e in batch]
        meta.write(("\n".join(lines) + "\n").encode())
    entry["files"]["meta"] = meta.close()
    if space.serialized is not None:
        index = _File(folder / f"ns-{number:04d}.faiss")
        index.write(space.serialized)
        entry["files"]["index"] = index.close()
        return entry
    ids, vectors = _File(folder / f"ns-{number:04d}.ids"), _File(folder / f"ns-{number:04d}.vectors")
    for start in range(0, space.rows, SLICE_ROWS):
        with lock:
            held = time.perf_counter()
            id_slice, vector_slice = stored_rows(space.index, start, min(start + SLICE_ROWS, space.rows))
            holds.append(time.perf_counter() - held)
        ids.write(id_slice.data)
        vectors.write(vector_slice.data)
    entry["files"]["ids"], entry["files"]["vectors"] = ids.close(), vectors.close()
    entry["rows"] = space.rows
    return entry


def data_bytes(manifest: dict) -> int:
    """The bytes of a snapshot's files: what its documents take on disk (log compaction compares the log with it)."""
    return sum(f["bytes"] for entry in manifest["namespaces"].values() for f in entry["files"].values())


def staging_folder(root: Path, seq: int) -> Path:
    """Where the snapshot as of ``seq`` is written before ``publish`` makes it live."""
    return root / f".staging-{seq:012d}"


def write_staging(root: Path, taken: Capture, spec: IndexSpec, lock: threading.RLock, holds: list[float]) -> dict:
    """Write the snapshot of ``taken`` into its staging folder, durably, and return its manifest.
    The caller holds no lock (``lock`` is taken per slice of rows, each hold's seconds appended to
    ``holds``) and runs one snapshot at a time."""
    staging = staging_folder(root, taken.seq)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    entries = {space.name: _write_space(space, number, staging, lock, holds)
               for number, space in enumerate(taken.spaces)}
    manifest = {"format": FORMAT, "seq": taken.seq, "next_id": taken.next_id, "spec": spec.describe(),
                "namespaces": entries}
    _write_durably(staging / "manifest.json", json.dumps(manifest, indent=1).encode())
    fsync_dir(staging)
    return manifest


def publish(root: Path, seq: int, log_name: str, log_offset: int) -> dict:
    """Make the staged snapshot as of ``seq`` (which ends at ``log_offset`` of ``log_name``) the live
    one, drop the older ones, and return its manifest."""
    folder = root / f"snap-{seq:012d}"
    shutil.rmtree(folder, ignore_errors=True)
    staging_folder(root, seq).rename(folder)
    manifest_path = folder / "manifest.json"
    pointer = {"snapshot": folder.name, "manifest_sha256": _sha256(manifest_path),
               "wal": log_name, "wal_offset": log_offset}
    switch(root, pointer)
    for old in root.glob("snap-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return json.loads(manifest_path.read_text())


def write(root: Path, taken: Capture, spec: IndexSpec, lock: threading.RLock, holds: list[float]) -> dict:
    """Write the snapshot of ``taken`` and switch ``CURRENT`` to it; returns its manifest."""
    write_staging(root, taken, spec, lock, holds)
    return publish(root, taken.seq, taken.log_name, taken.log_offset)


def switch(root: Path, pointer: dict) -> None:
    """Make ``pointer`` the live one, atomically and durably."""
    _write_durably(root / "CURRENT.tmp", json.dumps(pointer).encode())
    (root / "CURRENT.tmp").replace(root / "CURRENT")
    fsync_dir(root)


def read_pointer(root: Path) -> dict | None:
    """``CURRENT``'s content (None when there is no snapshot yet); ``SnapshotDamaged`` when unreadable."""
    current = root / "CURRENT"
    if not current.exists():
        return None
    try:
        pointer = json.loads(current.read_text())
        missing = {"snapshot", "manifest_sha256"} - set(pointer)
        if missing:
            raise ValueError(f"no {', '.join(sorted(missing))}")
    except (OSError, ValueError, TypeError) as exc:
        raise SnapshotDamaged(f"{current} cannot be read ({exc})") from exc
    return pointer


def live_log_name(root: Path) -> str:
    """The log that holds the writes: the one ``CURRENT`` names, or the first log before any snapshot.
    When ``CURRENT`` is unreadable, the only log there is (several: ``SnapshotDamaged``, naming them)."""
    try:
        pointer = read_pointer(root)
    except SnapshotDamaged as exc:
        logs = sorted(path.name for path in root.glob("wal*.log"))
        if len(logs) > 1:
            raise SnapshotDamaged(f"{exc}, and there are several logs ({', '.join(logs)}): a compaction was "
                                  "interrupted; keep the newest (the highest number) and move the others away") from exc
        return logs[0] if logs else FIRST_LOG
    return pointer.get("wal", FIRST_LOG) if pointer else FIRST_LOG


def read_manifest(root: Path, pointer: dict) -> tuple[Path, dict]:
    folder = root / pointer["snapshot"]
    path = folder / "manifest.json"
    try:
        if _sha256(path) != pointer["manifest_sha256"]:
            raise SnapshotDamaged(f"{path} is corrupt or truncated (checksum mismatch)")
        return folder, json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SnapshotDamaged(f"the snapshot named by {root / 'CURRENT'} cannot be read ({exc})") from exc


def _checked(folder: Path, described: dict) -> Path:
    path = folder / described["file"]
    if not path.exists():
        raise SnapshotDamaged(f"{path} is missing")
    if path.stat().st_size != described["bytes"] or _sha256(path) != described["sha256"]:
        raise SnapshotDamaged(f"{path} is corrupt or truncated (size or checksum mismatch)")
    return path


def _documents(path: Path) -> tuple[set[int], Iterator[list]]:
    handle = path.open(encoding="utf-8")
    tombstones = set(json.loads(handle.readline())["tombstones"])

    def rows() -> Iterator[list]:
        with handle:
            for line in handle:
                yield json.loads(line)

    return tombstones, rows()


def _mapped_rows(path: Path, entry: dict) -> np.ndarray:
    """A flat namespace's stored vectors, mapped rather than read (FAISS copies them in, so the process
    never holds them twice); a namespace emptied by deletes has an empty file, which cannot be mapped."""
    if not entry["rows"]:
        return np.empty((0, entry["dim"]), dtype=np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(entry["rows"], entry["dim"]))


def load_namespaces(folder: Path, manifest: dict, spec: IndexSpec) -> dict[str, Namespace]:
    """Every namespace of a checked snapshot, its files verified against the manifest."""
    loaded = {}
    for name, entry in manifest["namespaces"].items():
        files = {part: _checked(folder, described) for part, described in entry["files"].items()}
        tombstones, documents = _documents(files["meta"])
        try:
            if "index" in files:
                vectors = VectorIndex.from_bytes(files["index"].read_bytes(), entry["dim"], spec, tombstones)
            else:
                vectors = VectorIndex.from_rows(entry["dim"], spec, np.fromfile(files["ids"], dtype=np.int64),
                                                _mapped_rows(files["vectors"], entry), tombstones)
        except (RuntimeError, ValueError) as exc:
            raise SnapshotDamaged(f"the vectors of namespace {name!r} cannot be read ({exc})") from exc
        space = Namespace(name, entry["dim"], entry["embedder"], vectors)
        for doc_id, metadata, chunk_ids, texts in documents:
            space.put(doc_id, metadata, chunk_ids, texts)
        loaded[name] = space
    return loaded


def _row_finder(stored_ids: np.ndarray):
    """Row positions of ids: a binary search when the stored ids are sorted (ids are handed out in
    increasing order and rows join at the end), a table otherwise."""
    if np.all(stored_ids[1:] > stored_ids[:-1]):
        return lambda ids: np.searchsorted(stored_ids, ids)
    table = {int(i): position for position, i in enumerate(stored_ids)}
    return lambda ids: np.array([table[int(i)] for i in ids], dtype=np.int64)


def snapshot_documents(folder: Path, manifest: dict) -> Iterator[tuple[str, dict, Iterator[list], Callable]]:
    """Per namespace of a checked snapshot: its name, manifest entry, its documents ([id, metadata,
    chunk ids, texts], read as needed) and a function giving the vectors of chunk ids; what log
    compaction writes, read from the files rather than from the running store."""
    for name, entry in manifest["namespaces"].items():
        files = {part: folder / described["file"] for part, described in entry["files"].items()}
        _, documents = _documents(files["meta"])
        if "index" in files:
            index = faiss.deserialize_index(np.fromfile(files["index"], dtype=np.uint8))

            def vectors_of(ids: list[int], index: faiss.Index = index) -> np.ndarray:
                return index.reconstruct_batch(np.asarray(ids, dtype=np.int64))
        else:
            find = _row_finder(np.fromfile(files["ids"], dtype=np.int64))
            stored = _mapped_rows(files["vectors"], entry)

            def vectors_of(ids: list[int], find: Callable = find, stored: np.ndarray = stored) -> np.ndarray:
                return np.asarray(stored[find(ids)])
        yield name, entry, documents, vectors_of
