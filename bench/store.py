"""The embedded store under load: how long a snapshot stalls writes and searches, and how big the log stays.

For each size (10^5 and 10^6 chunks): a data directory is filled by writing the store's own upsert
records (one single-chunk document per upsert, synthetic unit vectors under the default embedder's name
and width; embedding 10^6 passages would take hours here), then opened (the log is replayed) and
snapshotted once. Then one thread upserts one short document at a time through ``IndexStore.upsert``
(the real embedder) and another searches, while the store takes the next snapshot in the background
as it does in service (a worker process rebuilds it from the first snapshot and the log tail,
``compressor/retrieval/snapshot_process.py``). The stall is the longest single write (or search)
that overlapped the snapshot, shown beside the longest outside it in the same run, with how many of
the writes during the snapshot took over the target, and the longest time the snapshot held the
store's lock (noting where the log stands; a write may also wait for one slice of a search,
``scan.py``; the rest is sharing the CPU with them). The worker's peak resident memory is shown
beside the server's. The target (``snapshot_max_stall_ms``) is the longest write: a search of 10^6
rows is a scan of 1.5 GB, slower while the snapshot writes, but it holds nobody up.

Log compaction: half the documents are replaced and a tenth deleted (records again), so the log
holds the dead versions too; then ``IndexStore.compact_log`` rewrites it. Live data = the live
documents' vectors, texts, ids and metadata in bytes; the report gives the log's size over it,
before and after.

    python -m bench.store [--sizes 100000,1000000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.report import markdown_table, progress, provenance, write
from compressor.embedding import Embedder
from compressor.retrieval.contract import Document
from compressor.retrieval.snapshot_worker import status_bytes
from compressor.retrieval.store import IndexStore
from compressor.retrieval.wal import WriteAheadLog

NAMESPACE = "bench"
TARGET_MS = 100  # the longest write during a snapshot, at 10^6 chunks
RECORD_DOCS = 1000  # documents per filled log record
WORDS = ("river", "engine", "harbour", "ledger", "falcon", "copper", "meadow", "signal", "archive", "lantern",
         "quartz", "orbit", "cedar", "vessel", "summit", "pixel", "tundra", "violet", "walnut", "zephyr")


def passage(number: int) -> str:
    """A deterministic ~200-character passage, distinct per number."""
    rng = np.random.default_rng(number)
    return f"Passage {number}: " + " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), 28)) + "."


def unit_rows(count: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    rows = rng.standard_normal((count, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def fill(folder: Path, embedder: Embedder, numbers: range, first_id: int, seq: int, rng: np.random.Generator,
         log: WriteAheadLog) -> tuple[int, int]:
    """Upsert records for documents ``numbers`` (ids ``doc-<number>``); returns (next id, next seq)."""
    for start in range(numbers.start, numbers.stop, RECORD_DOCS):
        batch = range(start, min(start + RECORD_DOCS, numbers.stop))
        seq += 1
        log.append({"op": "upsert", "ns": NAMESPACE, "dim": embedder.dim, "embedder": embedder.name,
                    "first_id": first_id, "seq": seq,
                    "docs": [{"id": f"doc-{n}", "metadata": {"shard": str(n % 16)}, "chunks": [passage(n)]}
                             for n in batch]},
                   unit_rows(len(batch), embedder.dim, rng).tobytes())
        first_id += len(batch)
        if (start - numbers.start) // RECORD_DOCS % 100 == 99:
            progress(f"filled {start + len(batch) - numbers.start}/{len(numbers)} documents")
    return first_id, seq


def live_bytes(store: IndexStore) -> int:
    """What the live documents hold: vectors, texts, ids and metadata."""
    total = 0
    for space in store.namespaces.values():
        for doc_id, entry in space.documents.items():
            total += len(doc_id.encode()) + sum(len(k.encode()) + len(v.encode()) for k, v in entry.metadata.items())
            total += sum(len(space.chunks[i][2].encode()) + 4 * space.dim for i in entry.chunk_ids)
    return total


class Load:
    """One writer and one searcher, each timing every call until stopped."""

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self.calls: list[tuple[str, float, float]] = []  # (kind, started, ended)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.write, daemon=True),
                        threading.Thread(target=self.search, daemon=True)]

    def write(self) -> None:
        number = 0
        while not self.stop.is_set():
            number += 1
            started = time.perf_counter()
            self.store.upsert(NAMESPACE, [Document(f"live-{number}", f"A fresh passage about lanterns, {number}.")])
            self.calls.append(("write", started, time.perf_counter()))

    def search(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            self.store.search(NAMESPACE, "copper harbour signal", 10)
            self.calls.append(("search", started, time.perf_counter()))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def durations(self, kind: str, window: tuple[float, float], inside: bool) -> list[float]:
        """The calls of ``kind`` overlapping ``window`` (or, ``inside`` false, not touching it), in ms."""
        start, end = window
        return [(e - s) * 1000 for k, s, e in self.calls if k == kind and (s < end and e > start) == inside]

    def longest(self, kind: str, window: tuple[float, float], inside: bool) -> float:
        return max(self.durations(kind, window, inside), default=0.0)

    def median(self, kind: str) -> float:
        return statistics.median((e - s) * 1000 for k, s, e in self.calls if k == kind)

    def over(self, kind: str, window: tuple[float, float], milliseconds: float) -> tuple[int, int]:
        """(calls of ``kind`` overlapping ``window`` that took over ``milliseconds``, all that overlapped it)."""
        inside = self.durations(kind, window, True)
        return sum(t > milliseconds for t in inside), len(inside)


def measure(size: int, embedder: Embedder) -> dict:
    rng = np.random.default_rng(size)
    with tempfile.TemporaryDirectory(prefix="focal-store-") as folder:
        root = Path(folder)
        log = WriteAheadLog(root / "wal.log")
        fill(root, embedder, range(size), 0, 0, rng, log)
        log.close()
        progress(f"{size}: opening (replaying the log)")
        opened = time.perf_counter()
        store = IndexStore(root, embedder, snapshot_every=10**9)
        open_s = time.perf_counter() - opened
        figures: dict = {"chunks": size, "open_s": round(open_s, 1)}
        progress(f"{size}: a first snapshot, in-process (the background one then starts from it, as in service)")
        store.snapshot()
        with Load(store) as load:
            time.sleep(3)
            progress(f"{size}: snapshot under load, in the background as in service (a worker process writes it)")
            started = time.perf_counter()
            store.maintain_in_background()
            store.settle()
            window = (started, time.perf_counter())
            time.sleep(3)
        figures["snapshot_s"] = round(window[1] - window[0], 2)
        figures["longest_lock_hold_ms"] = store.last_snapshot["longest_lock_hold_ms"]
        figures["server_rss_bytes"] = status_bytes("VmRSS")
        figures["worker_peak_rss_bytes"] = store.last_snapshot["worker_peak_rss_bytes"]
        figures["writes_over_target"], figures["writes_during"] = load.over("write", window, TARGET_MS)
        for kind in ("write", "search"):
            figures[f"{kind}_max_stall_ms"] = round(load.longest(kind, window, True), 1)
            figures[f"{kind}_max_outside_ms"] = round(load.longest(kind, window, False), 1)
            figures[f"{kind}_median_ms"] = round(load.median(kind), 1)
        store.close(snapshot=False)
        figures.update(compaction(root, embedder, size, rng))
    progress(f"{size}: {figures}")
    return figures


def compaction(root: Path, embedder: Embedder, size: int, rng: np.random.Generator) -> dict:
    """Replace half the documents and delete a tenth, then compact the log."""
    store = IndexStore(root, embedder, snapshot_every=10**9)
    seq, next_id = store.seq, store.next_id
    store.close(snapshot=False)
    log = WriteAheadLog(root / store.wal_name, start=0)
    next_id, seq = fill(root, embedder, range(0, size // 2), next_id, seq, rng, log)
    for start in range(size // 2, size // 2 + size // 10, RECORD_DOCS):
        seq += 1
        log.append({"op": "delete", "ns": NAMESPACE, "seq": seq,
                    "ids": [f"doc-{n}" for n in range(start, min(start + RECORD_DOCS, size // 2 + size // 10))]})
    log.close()
    store = IndexStore(root, embedder, snapshot_every=10**9)
    live = live_bytes(store)
    before = store.wal.end
    progress(f"{size}: compacting a log of {before / 2**20:.0f} MiB ({live / 2**20:.0f} MiB live)")
    started = time.perf_counter()
    store.compact_log()
    seconds = time.perf_counter() - started
    after = store.wal.end
    store.close(snapshot=False)
    reopened = IndexStore(root, embedder, snapshot_every=10**9)
    documents = len(reopened.namespaces[NAMESPACE].documents)
    reopened.close(snapshot=False)
    return {"live_bytes": live, "log_bytes_before": before, "log_bytes_after": after,
            "log_over_live_before": round(before / live, 3), "log_over_live_after": round(after / live, 3),
            "compaction_s": round(seconds, 1), "documents_after_reopen": documents}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="chunks per run (default: %(default)s)")
    args = parser.parse_args()
    embedder = Embedder()
    sizes = {int(s): measure(int(s), embedder) for s in args.sizes.split(",")}
    rows = [[f"{n:,}", f"{f['snapshot_s']:.2f}", f"{f['longest_lock_hold_ms']:.1f}",
             f"{f['server_rss_bytes'] / 2**30:.2f} / {f['worker_peak_rss_bytes'] / 2**30:.2f}",
             " / ".join(f"{f[key]:.0f}" for key in ("write_max_stall_ms", "write_max_outside_ms", "write_median_ms")),
             f"{f['writes_over_target']} of {f['writes_during']}",
             " / ".join(f"{f[key]:.0f}" for key in ("search_max_stall_ms", "search_max_outside_ms",
                                                     "search_median_ms")),
             f"{f['log_over_live_before']:.2f}", f"{f['log_over_live_after']:.2f}", f"{f['compaction_s']:.1f}"]
            for n, f in sizes.items()]
    markdown = "\n".join([
        "# The embedded store: snapshot stalls and log compaction", "",
        "A writer (one single-chunk document per upsert, real embedder) and a searcher run throughout; in the",
        "middle the store takes a snapshot in the background, written at the lowest priority by a worker",
        "process that rebuilds the store from the previous snapshot and the log tail (it shares no memory with",
        "the server). Stall = the longest call that overlapped the snapshot; beside it the longest call outside",
        "the snapshot and the median, all in ms. The longest lock hold is how long the snapshot kept writes and",
        "searches waiting at most (noting where the log stands); a write may also wait for one slice of a",
        f"search, and the rest of a stall is the {os.cpu_count()} cores shared with the worker. The target is the",
        f"longest write during the snapshot (under {TARGET_MS} ms at 10^6 chunks); beside it, how many writes",
        "during the snapshot took longer. Memory: the server's resident memory and the worker's peak, in GiB.",
        "Log sizes are over the live documents' bytes (vectors, texts, ids, metadata) after replacing half the",
        "documents and deleting a tenth.", "",
        markdown_table(["chunks", "snapshot s", "longest lock hold ms", "memory: server / worker GiB",
                        "write: stall / max outside / median", f"writes over {TARGET_MS} ms",
                        "search: stall / max outside / median", "log / live before", "log / live after",
                        "compaction s"], rows)])
    payload = {"sizes": {str(n): f for n, f in sizes.items()},
               "snapshot_max_stall_ms": max(f["write_max_stall_ms"] for f in sizes.values()),
               "snapshot_longest_lock_hold_ms": max(f["longest_lock_hold_ms"] for f in sizes.values()),
               "provenance": provenance({"sizes": args.sizes})}
    write("store", payload, markdown)


if __name__ == "__main__":
    main()
