"""The embedded store under load: how long a snapshot stalls writes and searches, and how big the log stays.

For each size (10^5 and 10^6 chunks): a data directory is filled by writing the store's own upsert
records (one single-chunk document per upsert, synthetic unit vectors under the default embedder's name
and width; embedding 10^6 passages would take hours here), then opened (the log is replayed) and
snapshotted once. Then one thread upserts one short document at a time through ``IndexStore.upsert``
(the real embedder) and another searches, while the store takes the next snapshot in the background
as it does in service (a worker process rebuilds it from the first snapshot and the log tail,
``compressor/retrieval/snapshot_process.py``); then the same load runs for a control window of the
same length with no snapshot. The same again with the writer alone. For the calls overlapping each
window: the longest, the 99.9th percentile, the median and how many took over the target, and the
longest time the snapshot held the store's lock (noting where the log stands; a write may also wait
for one slice of a search, ``scan.py``). The control window is what tells the snapshot's cost from
the load's own: on 2 cores a writer and a searcher slow each other down, and the longest of 10^4 calls
is longer than the longest of 10^2 whatever happens. The worker's peak resident memory is shown
beside the server's. The target (``snapshot_max_stall_ms``) is the longest write during the snapshot
with the searcher running: a search of 10^6 rows is a scan of 1.5 GB, slower while the snapshot
writes, but it holds nobody up.

Log compaction: half the documents are replaced and a tenth deleted (records again), so the log
holds the dead versions too; then ``IndexStore.compact_log`` rewrites it. Live data = the live
documents' vectors, texts, ids and metadata in bytes; the report gives the log's size over it,
before and after.

    python -m bench.store [--sizes 100000,1000000]
"""

from __future__ import annotations

import argparse
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
CONTROL_MAX_S = 600  # the control window (same load, no snapshot) is as long as the snapshot, up to this
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

    def __init__(self, store: IndexStore, searching: bool) -> None:
        self.store = store
        self.calls: list[tuple[str, float, float]] = []  # (kind, started, ended)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.write, daemon=True)]
        if searching:
            self.threads.append(threading.Thread(target=self.search, daemon=True))

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

    def durations(self, kind: str, window: tuple[float, float]) -> list[float]:
        """The calls of ``kind`` overlapping ``window``, in ms."""
        start, end = window
        return [(e - s) * 1000 for k, s, e in self.calls if k == kind and s < end and e > start]

    def figures(self, kind: str, window: tuple[float, float]) -> dict:
        """Longest, 99.9th percentile, median, and how many took over the target, of the calls of
        ``kind`` overlapping ``window``."""
        took = self.durations(kind, window)
        if not took:
            return {"calls": 0}
        return {"calls": len(took), "max_ms": round(max(took), 1),
                "p999_ms": round(float(np.percentile(took, 99.9)), 1),
                "median_ms": round(statistics.median(took), 1), "over_target": sum(t > TARGET_MS for t in took)}


def under_load(store: IndexStore, size: int, searching: bool) -> dict:
    """A snapshot taken in the background as in service while the load runs, then a control window
    of the same length (at most ``CONTROL_MAX_S``) with the same load and no snapshot: the calls'
    figures in both, so what the snapshot adds is told apart from what the load does by itself on
    this machine (the longest of 10^4 calls is longer than the longest of 10^2 whatever happens)."""
    name = "writer and searcher" if searching else "writer alone"
    with Load(store, searching) as load:
        time.sleep(3)
        progress(f"{size}: {name}: snapshot in the background, as in service (a worker process writes it)")
        started = time.perf_counter()
        store.maintain_in_background()
        store.settle()
        snapshot = (started, time.perf_counter())
        control_s = min(snapshot[1] - snapshot[0], CONTROL_MAX_S)
        progress(f"{size}: {name}: snapshot took {snapshot[1] - snapshot[0]:.1f}s; control window of {control_s:.1f}s")
        time.sleep(1 + control_s)
        control = (snapshot[1] + 1, snapshot[1] + 1 + control_s)
    kinds = ("write", "search") if searching else ("write",)
    figures = {"snapshot_s": round(snapshot[1] - snapshot[0], 2), "control_s": round(control_s, 2),
               "longest_lock_hold_ms": store.last_snapshot["longest_lock_hold_ms"],
               "worker_peak_rss_bytes": store.last_snapshot["worker_peak_rss_bytes"],
               **{f"{kind}_during": load.figures(kind, snapshot) for kind in kinds},
               **{f"{kind}_control": load.figures(kind, control) for kind in kinds}}
    progress(f"{size}: {name}: {figures}")
    return figures


def measure(size: int, embedder: Embedder, writer_alone: bool = True) -> dict:
    """Fill, open and snapshot a store of ``size`` chunks; a background snapshot under load with its
    control window, with a searcher, then (``writer_alone``) without; then log compaction."""
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
        progress(f"{size}: a first snapshot, in-process (the background ones then start from it, as in service)")
        store.snapshot()
        figures["with_searcher"] = under_load(store, size, searching=True)
        if writer_alone:
            figures["writer_alone"] = under_load(store, size, searching=False)
        figures["server_rss_bytes"] = status_bytes("VmRSS")
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


PHASES = {"with_searcher": "writer + searcher", "writer_alone": "writer alone"}


def pair(figures: dict, kind: str, key: str) -> str:
    """``key`` of ``kind``'s calls during the snapshot / in the control window."""
    during, control = figures[f"{kind}_during"], figures[f"{kind}_control"]
    if key == "over_target":
        return f"{during.get(key, 0)} of {during['calls']} / {control.get(key, 0)} of {control['calls']}"
    return f"{during.get(key, 0):.0f} / {control.get(key, 0):.0f}"


def load_rows(sizes: dict) -> list[list[str]]:
    rows = []
    for n, f in sizes.items():
        for phase, label in PHASES.items():
            if phase not in f:
                continue
            p = f[phase]
            rows.append([f"{n:,}", label, f"{p['snapshot_s']:.1f} / {p['control_s']:.1f}",
                         f"{p['longest_lock_hold_ms']:.2f}", pair(p, "write", "max_ms"), pair(p, "write", "p999_ms"),
                         pair(p, "write", "median_ms"), pair(p, "write", "over_target"),
                         pair(p, "search", "max_ms") if "search_during" in p else "-"])
    return rows


LOAD_HEADER = ["chunks", "load", "window s: snapshot / control", "longest lock hold ms",
               "write max ms", "write p99.9 ms", "write median ms", f"writes over {TARGET_MS} ms",
               "search max ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="chunks per run (default: %(default)s)")
    args = parser.parse_args()
    embedder = Embedder()
    sizes = {int(s): measure(int(s), embedder) for s in args.sizes.split(",")}
    other_rows = [[f"{n:,}", f"{f['server_rss_bytes'] / 2**30:.2f} / "
                   f"{max(f[p]['worker_peak_rss_bytes'] for p in PHASES if p in f) / 2**30:.2f}",
                   f"{f['log_over_live_before']:.2f}", f"{f['log_over_live_after']:.2f}", f"{f['compaction_s']:.1f}"]
                  for n, f in sizes.items()]
    markdown = "\n".join([
        "# The embedded store: snapshot stalls and log compaction", "",
        "The store takes a snapshot in the background, as in service: a worker process at the lowest CPU",
        "priority rebuilds the store from the previous snapshot and the log tail (it shares no memory with the",
        "server), twice: once while a writer (one single-chunk document per upsert, real embedder) and a",
        "searcher (exact search over every row) run, once with the writer alone. Each snapshot window is",
        "followed by a control window of the same length with the same load and no snapshot, so what the",
        "snapshot adds shows apart from what the load does by itself on this machine. Each cell is",
        "snapshot window / control window, in ms. The longest lock hold is how long the snapshot kept writes",
        "and searches waiting at most (noting where the log stands); a write may also wait for one slice of a",
        f"search. The target is the longest write during the snapshot (under {TARGET_MS} ms at 10^6 chunks).",
        "", markdown_table(LOAD_HEADER, load_rows(sizes)), "",
        "Memory (the server's resident memory and the worker's peak, GiB) and log compaction (the log's size over",
        "the live documents' bytes, vectors, texts, ids, metadata, after replacing half the documents and",
        "deleting a tenth):", "",
        markdown_table(["chunks", "memory: server / worker GiB", "log / live before", "log / live after",
                        "compaction s"], other_rows)])
    payload = {"sizes": {str(n): f for n, f in sizes.items()},
               "snapshot_max_stall_ms": max(f["with_searcher"]["write_during"]["max_ms"] for f in sizes.values()),
               "snapshot_max_stall_ms_writer_alone": max(f["writer_alone"]["write_during"]["max_ms"]
                                                         for f in sizes.values()),
               "control_max_write_ms": max(f["with_searcher"]["write_control"]["max_ms"] for f in sizes.values()),
               "snapshot_longest_lock_hold_ms": max(f[p]["longest_lock_hold_ms"] for f in sizes.values()
                                                    for p in PHASES),
               "provenance": provenance({"sizes": args.sizes})}
    write("store", payload, markdown)


if __name__ == "__main__":
    main()
