"""``focal index repair``: a data directory whose write-ahead log is damaged, made whole again.

The store refuses to open a damaged log (a bad magic, a complete record whose checksum fails, or a
log shorter than its snapshot says) rather than guess. The repair keeps everything it can prove:

- When the snapshot (checked by its SHA-256 sums) reaches past the damage, it holds every
  acknowledged write up to its point: the log is written anew from the snapshot's documents (one
  upsert record each, vectors included), followed by the intact records that came after the
  snapshot. Nothing acknowledged is lost.
- Otherwise the log is cut just before the damaged record, and what lay from there on is lost (the
  report says how many bytes); the index is then rebuilt from the log.

Either way the new log is switched in atomically (written beside, fsynced, renamed) and a fresh
snapshot is taken by replaying it from the start, which proves it whole.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from compressor.retrieval.errors import IndexCorrupt
from compressor.retrieval.snapshot import live_log_name
from compressor.retrieval.store import IndexStore, rebuild
from compressor.retrieval.vectors import IndexSpec
from compressor.retrieval.wal import LogCorrupt, Record, WriteAheadLog, fsync_dir, intact_end, scan


def _intact_records(path: Path, start: int) -> tuple[list[Record], int]:
    """The whole records from ``start`` up to any damage, and where they end."""
    records: list[Record] = []
    with contextlib.suppress(LogCorrupt):
        for record in scan(path, start):
            records.append(record)
    return records, records[-1].end if records else start


def _snapshot_state(root: Path, spec: IndexSpec | None) -> IndexStore | None:
    try:
        return IndexStore(root, None, spec, open_log=False)
    except IndexCorrupt:
        return None


def _write_from_snapshot(store: IndexStore, later: list[Record], target: Path) -> int:
    """Write ``target`` as one upsert per document of ``store`` then ``later``; returns the records written."""
    log = WriteAheadLog(target)
    seq = 0
    try:
        for name, space in sorted(store.namespaces.items()):
            for doc_id, entry in space.documents.items():
                ids = entry.chunk_ids
                if ids != list(range(ids[0], ids[0] + len(ids))):
                    raise IndexCorrupt(f"document {doc_id!r} of namespace {name!r} has scattered chunk ids")
                seq += 1
                log.append({"op": "upsert", "ns": name, "dim": space.dim, "embedder": space.embedder,
                            "first_id": ids[0], "seq": seq,
                            "docs": [{"id": doc_id, "metadata": entry.metadata,
                                      "chunks": [space.chunks[i][2] for i in ids]}]},
                           space.vectors.vectors_of(ids).tobytes())
        for record in later:
            seq += 1
            log.append({**record.header, "seq": seq}, record.body)
    finally:
        log.close()
    return seq


def repair(data_dir: str | Path, spec: IndexSpec | None = None) -> dict:
    """Repair the log of ``data_dir`` (no server may hold it) and rebuild the index from it."""
    root = Path(data_dir)
    path = root / live_log_name(root)
    size = path.stat().st_size if path.exists() else 0
    try:
        intact, damaged = intact_end(path), False
    except LogCorrupt as exc:
        intact, damaged = exc.offset, True
    snapshot = _snapshot_state(root, spec)
    covered = snapshot.snapshot_offset if snapshot is not None else 0
    try:
        if snapshot is not None and covered > intact:
            later, later_end = _intact_records(path, covered) if size > covered else ([], covered)
            staging = path.with_name(path.name + ".repair")
            staging.unlink(missing_ok=True)
            written = _write_from_snapshot(snapshot, later, staging)
            report = {"action": "log written anew from the snapshot", "records": written,
                      "records_after_snapshot": len(later), "dropped_bytes": max(size - later_end, 0)}
        elif damaged:
            staging = path.with_name(path.name + ".repair")
            with path.open("rb") as source, staging.open("wb") as target:
                target.write(source.read(intact))
                target.flush()
                os.fsync(target.fileno())
            report = {"action": "log cut before the damaged record", "dropped_bytes": size - intact}
        else:
            return {"action": "none: the log is intact (a damaged snapshot is repaired by `focal index rebuild`)"}
    finally:
        if snapshot is not None:
            snapshot.close(snapshot=False)
    os.replace(staging, path)
    fsync_dir(root)
    return {**report, "index": rebuild(root, spec)}
