"""Retrieval: both backends side by side on real passages, and FAISS speed at scale.

1. Backends: every passage of the NQ dev set (20 per question, repeated passages merged) goes into
   one namespace of the embedded ``IndexStore`` (flat index) and of a ``MilvusStore`` on each of two
   Milvus servers started here one after the other (the Milvus 2.3.5 standalone server, or
   ``--milvus-uri``, as ``milvus``; Milvus Lite as ``milvus_lite``), all chunked and embedded with
   all-MiniLM-L6-v2; each question searches each; recall@k = the question's gold passage is among
   the top k, MRR over the top 20; upsert throughput (passages/s, embedding included) and search
   latency (query embedding included) per backend, Milvus at Strong and at Session consistency.
   The pool is the union of the questions' own candidate lists (20 each), so recall@20 is easy
   here: read recall@1 and @5 first.
   Then 10^5 synthetic vectors straight into each backend's index (no embedder): single-query
   search p50/p99 at k=10, exact on all, Milvus at each consistency level before and after its
   segments are sealed.
   And the embedded store under load (``bench.store``): the longest write and search while it
   snapshots, at 10^6 chunks (10^5 with ``--quick``), and the log's size after compaction.
2. Speed: synthetic clustered unit vectors (384-dim, like the embedder's) at 10^5 and 10^6;
   for flat, IVF and HNSW (``VectorIndex``, as the server uses it): build time, single-query
   latency p50/p99 at k=10, recall@10 against exact search, and the p50 speed-up over a plain
   NumPy brute-force search measured in the same run on the same vectors. IVF and HNSW are also
   searched wider (nprobe 64, efSearch 256) on the same index: the recall-for-latency trade.

    python -m bench.retrieval [--quick] [--queries N] [--milvus-uri http://host:19530]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from bench.report import RESULTS, markdown_table, progress, provenance, write
from bench.store import LOAD_HEADER, load_rows
from bench.store import measure as store_figures
from compressor.embedding import Embedder
from compressor.retrieval.contract import Document
from compressor.retrieval.milvus import MilvusConfig, MilvusStore
from compressor.retrieval.store import IndexStore
from compressor.retrieval.vectors import IndexSpec, VectorIndex
from devtools.data import NQ_DEV, chunk_text, passage_id, read_rows
from devtools.milvus_server import MilvusLite, MilvusStandalone

DIM = 384
SPECS = {"flat": IndexSpec("flat"), "ivf": IndexSpec("ivf", nlist=1024, nprobe=16),
         "hnsw": IndexSpec("hnsw", m=32, ef_construction=80, ef_search=64)}
MILVUS_LEVELS = ("Strong", "Session", "Bounded")
WIDER_SEARCH = {"ivf_nprobe64": ("ivf", {"nprobe": 64}), "hnsw_ef256": ("hnsw", {"ef_search": 256})}


def index_nq(store, name: str) -> tuple[list[dict], dict]:
    """Index the NQ pool into ``store``; the questions and the indexing figures."""
    rows = read_rows(NQ_DEV)
    passages = {passage_id(chunk_text(c)): chunk_text(c) for row in rows for c in row["chunks"]}
    items = list(passages.items())
    started = time.perf_counter()
    for start in range(0, len(items), 250):
        store.upsert("nq", [Document(i, t) for i, t in items[start:start + 250]])
        progress(f"{name}: indexed {min(start + 250, len(items))}/{len(items)} passages")
    index_s = time.perf_counter() - started
    return rows, {"questions": len(rows), "passages": len(passages), "index_s": round(index_s, 1),
                  "upserts_per_s": round(len(passages) / index_s, 1)}


def search_nq(store, rows: list[dict], name: str) -> dict:
    """Every question searches ``store``: recall@1/5/20, MRR@20 and search latency (query embedding
    included)."""
    found, reciprocal, took = {1: 0, 5: 0, 20: 0}, 0.0, []
    for row in rows:
        gold = passage_id(chunk_text(next(c for c in row["chunks"] if c["is_gold"])))
        clock = time.perf_counter()
        hits = store.search("nq", row["question"], 40)
        took.append((time.perf_counter() - clock) * 1000)
        ranked = list(dict.fromkeys(h.document_id for h in hits))
        for k in found:
            found[k] += gold in ranked[:k]
        reciprocal += 1 / (ranked.index(gold) + 1) if gold in ranked[:20] else 0.0
    progress(f"{name}: recall@1 {found[1] / len(rows):.2f}, @5 {found[5] / len(rows):.2f}, "
             f"search p50 {np.percentile(took, 50):.1f} ms")
    return {**{f"recall_at_{k}": n / len(rows) for k, n in found.items()}, "mrr": reciprocal / len(rows),
            "search_p50_ms": round(float(np.percentile(took, 50)), 2),
            "search_p99_ms": round(float(np.percentile(took, 99)), 2)}


def percentiles(took: np.ndarray) -> dict:
    return {"p50_ms": round(float(np.percentile(took, 50)), 3), "p99_ms": round(float(np.percentile(took, 99)), 3)}


def milvus_vectors(uri: str, data: np.ndarray, queries: np.ndarray, name: str) -> dict:
    """``data`` straight into a Milvus collection (FLAT, inner product, as ``MilvusStore`` makes it);
    single-query search latency at k=10 at each consistency level: first with the rows still in
    growing segments (``Session`` only), then after a flush has sealed them (what Milvus does by
    itself as segments fill or idle, and what a bulk load ends with)."""
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri)
    table = "focal_bench_vectors"
    if client.has_collection(table):
        client.drop_collection(table)
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="IP")
    client.create_collection(table, schema=schema, index_params=index, consistency_level="Strong")
    started = time.perf_counter()
    for start in range(0, len(data), 5000):
        client.insert(table, [{"id": start + i, "vector": v.tolist()} for i, v in enumerate(data[start:start + 5000])])
        progress(f"{name}: inserted {min(start + 5000, len(data))}/{len(data)} vectors")
    insert_s = time.perf_counter() - started

    def search(level: str) -> dict:
        figures = percentiles(latencies(lambda q: client.search(
            table, [q[0].tolist()], limit=10, search_params={"metric_type": "IP"}, consistency_level=level), queries))
        progress(f"{name}: 10^5 vectors, {level} p50 {figures['p50_ms']:.2f} ms")
        return figures

    growing = search("Session")
    client.flush(table)
    sealed = {level: search(level) for level in MILVUS_LEVELS}
    client.drop_collection(table)
    client.close()
    return {"insert_s": round(insert_s, 1), "growing_session": growing, "sealed": sealed}


def faiss_side(embedder: Embedder, data: np.ndarray, queries: np.ndarray) -> tuple[dict, dict]:
    """The embedded store on the NQ pool, and a flat ``VectorIndex`` on the 10^5 vectors."""
    with tempfile.TemporaryDirectory() as folder:
        store = IndexStore(folder, embedder, snapshot_every=10**9)
        rows, indexed = index_nq(store, "faiss")
        nq = {**indexed, **search_nq(store, rows, "faiss")}
        store.close(snapshot=False)
    index = VectorIndex(DIM, SPECS["flat"])
    index.add(np.arange(len(data), dtype=np.int64), data)
    flat = percentiles(latencies(lambda q: index.search(q, 10), queries))
    progress(f"faiss: 10^5 vectors, flat p50 {flat['p50_ms']:.2f} ms")
    return nq, flat


def milvus_side(uri: str, name: str, embedder: Embedder, data: np.ndarray, queries: np.ndarray) -> tuple[dict, dict]:
    """A Milvus server on the NQ pool through ``MilvusStore`` (written and searched at its default
    consistency, ``Strong``; searched again by a second store at ``Session``, which sees its own process's writes
    without waiting for the server's time tick), and on the 10^5 vectors."""
    store = MilvusStore(MilvusConfig(uri), embedder)
    rows, indexed = index_nq(store, name)
    nq = {**indexed, **search_nq(store, rows, name)}
    reader = MilvusStore(MilvusConfig(uri, consistency="Session"), embedder)
    session = search_nq(reader, rows, f"{name} (Session)")
    nq.update({"consistency": store.config.consistency, "session_search_p50_ms": session["search_p50_ms"],
               "session_search_p99_ms": session["search_p99_ms"], "session_recall_at_5": session["recall_at_5"]})
    reader.close()
    store.close()
    return nq, milvus_vectors(uri, data, queries, name)


@contextmanager
def milvus_server(kind: str, folder: Path):
    """A Milvus server of ``kind`` (``standalone`` or ``lite``) started in ``folder``; its URI."""
    server = MilvusStandalone(folder / "standalone") if kind == "standalone" else \
        MilvusLite(folder / "lite", folder / "lite.log")
    server.start()
    progress(f"milvus {kind} on {server.uri}, data in {folder}")
    try:
        yield server.uri
    finally:
        server.stop()


def backends(embedder: Embedder, milvus_uri: str, queries_count: int) -> tuple[dict, dict]:
    """The same passages and vectors in each backend, one backend running at a time (a Milvus server
    idling beside a FAISS measurement would share its 2 cores): ``faiss``, ``milvus`` (the Milvus
    standalone server started here, or ``milvus_uri``) and ``milvus_lite``."""
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((2000, DIM), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    data, queries = clustered(100_000, rng, centers), clustered(queries_count, rng, centers)
    nq, vectors = {}, {}
    nq["faiss"], vectors["faiss_flat"] = faiss_side(embedder, data, queries)
    folder = Path(tempfile.mkdtemp(prefix="focal-milvus-"))
    if milvus_uri:
        nq["milvus"], vectors["milvus"] = milvus_side(milvus_uri, "milvus", embedder, data, queries)
    else:
        with milvus_server("standalone", folder) as uri:
            nq["milvus"], vectors["milvus"] = milvus_side(uri, "milvus", embedder, data, queries)
    with milvus_server("lite", folder) as uri:
        nq["milvus_lite"], vectors["milvus_lite"] = milvus_side(uri, "milvus_lite", embedder, data, queries)
    flat = vectors["faiss_flat"]["p50_ms"]
    vectors["over_faiss_p50"] = {name: {level: round(figures["p50_ms"] / flat, 2)
                                        for level, figures in vectors[name]["sealed"].items()}
                                 for name in ("milvus", "milvus_lite")}
    return nq, vectors


def clustered(n: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    """Unit vectors around random centres, cosine about 0.8 to their centre (real embeddings cluster;
    uniform noise is the worst case of every approximate index)."""
    labels = rng.integers(0, len(centers), n)
    vectors = centers[labels] + 0.035 * rng.standard_normal((n, DIM), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def latencies(search, queries: np.ndarray) -> np.ndarray:
    times = []
    for query in queries:
        started = time.perf_counter()
        search(query[None, :])
        times.append(time.perf_counter() - started)
    return np.array(times) * 1000


def numpy_search(data: np.ndarray, k: int):
    def search(query: np.ndarray) -> np.ndarray:
        scores = data @ query[0]
        top = np.argpartition(-scores, k)[:k]
        return top[np.argsort(-scores[top])]

    return search


def speed(size: int, queries_count: int, rng: np.random.Generator) -> dict:
    centers = rng.standard_normal((2000, DIM), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    progress(f"{size}: generating vectors")
    data = np.concatenate([clustered(min(100_000, size - s), rng, centers) for s in range(0, size, 100_000)])
    queries = clustered(queries_count, rng, centers)
    ids = np.arange(size, dtype=np.int64)
    exact = numpy_search(data, 10)
    truth = [set(exact(q[None, :]).tolist()) for q in queries]
    baseline = latencies(exact, queries)
    results = {"numpy": {"p50_ms": float(np.percentile(baseline, 50)), "p99_ms": float(np.percentile(baseline, 99)),
                         "build_s": 0.0, "speedup_vs_numpy": 1.0, "recall_at_10": 1.0}}
    progress(f"{size}: numpy brute force p50 {results['numpy']['p50_ms']:.2f} ms")
    for kind, spec in SPECS.items():
        started = time.perf_counter()
        index = VectorIndex(DIM, spec)
        for start in range(0, size, 50_000):
            index.add(ids[start:start + 50_000], data[start:start + 50_000])
        build_s = time.perf_counter() - started
        progress(f"{size}: {kind} built in {build_s:.1f}s")
        variants = {kind: spec, **{name: replace(spec, **change) for name, (base, change) in WIDER_SEARCH.items()
                                   if base == kind}}
        for name, variant in variants.items():  # the same index, searched wider
            index.spec = variant
            found = [set(index.search(q[None, :], 10)[1][0].tolist()) for q in queries]
            recall = float(np.mean([len(f & t) / 10 for f, t in zip(found, truth)]))
            took = latencies(lambda q, index=index: index.search(q, 10), queries)
            p50 = float(np.percentile(took, 50))
            results[name] = {"p50_ms": round(p50, 3), "p99_ms": round(float(np.percentile(took, 99)), 3),
                             "build_s": round(build_s, 2),
                             "speedup_vs_numpy": round(results["numpy"]["p50_ms"] / p50, 2),
                             "recall_at_10": round(recall, 3)}
            progress(f"{size}: {name} p50 {p50:.3f} ms, recall@10 {recall:.3f}")
        del index
    results["numpy"] = {k: round(v, 3) for k, v in results["numpy"].items()}
    return results


def plot(sizes: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(next(iter(sizes.values())))
    figure, axes = plt.subplots(1, 2, figsize=(13, 4))
    width = 0.8 / len(sizes)
    for offset, (size, results) in enumerate(sizes.items()):
        positions = np.arange(len(kinds)) + offset * width
        axes[0].bar(positions, [results[k]["p50_ms"] for k in kinds], width, label=f"{int(size):,} vectors")
        axes[1].bar(positions, [results[k]["recall_at_10"] for k in kinds], width, label=f"{int(size):,} vectors")
    for axis, title in zip(axes, ("query latency p50 (ms, log)", "recall@10 vs exact")):
        axis.set_xticks(np.arange(len(kinds)) + width * (len(sizes) - 1) / 2, kinds)
        axis.set_title(title)
        axis.legend()
    axes[0].set_yscale("log")
    figure.tight_layout()
    figure.savefig(RESULTS / "retrieval.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the 10^5 size")
    parser.add_argument("--queries", type=int, default=200, help="queries per size (default: %(default)s)")
    parser.add_argument("--milvus-uri", default="",
                        help="a running Milvus for the 'milvus' side (default: the Milvus standalone server, "
                             "started here)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(2)
    embedder = Embedder()
    nq, vectors = backends(embedder, args.milvus_uri, args.queries)
    recall = nq["faiss"]
    rng = np.random.default_rng(0)
    sizes = {str(size): speed(size, args.queries, rng) for size in ([100_000] if args.quick else [100_000, 1_000_000])}
    rows = [[f"{int(size):,}", kind, f"{r['build_s']:.1f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
             f"{r['recall_at_10']:.3f}", f"{r['speedup_vs_numpy']:.1f}x"]
            for size, results in sizes.items() for kind, r in results.items()]
    backend_rows = [[name, f"{r['recall_at_1']:.2f}", f"{r['recall_at_5']:.2f}", f"{r['recall_at_20']:.2f}",
                     f"{r['mrr']:.3f}", f"{r['upserts_per_s']:.0f}", f"{r['search_p50_ms']:.1f}",
                     f"{r['search_p99_ms']:.1f}", f"{r['session_search_p50_ms']:.1f}" if "session_search_p50_ms" in r
                     else "-"] for name, r in nq.items()]
    flat = vectors["faiss_flat"]
    vector_rows = [["faiss", "flat (the embedded store's default)", "-", f"{flat['p50_ms']:.2f}",
                    f"{flat['p99_ms']:.2f}", "1.00x"]]
    for name in ("milvus", "milvus_lite"):
        side = vectors[name]
        vector_rows.append([name, "FLAT, growing segments", "Session", f"{side['growing_session']['p50_ms']:.2f}",
                            f"{side['growing_session']['p99_ms']:.2f}",
                            f"{side['growing_session']['p50_ms'] / flat['p50_ms']:.2f}x"])
        vector_rows += [[name, "FLAT, sealed (after a flush)", level, f"{f['p50_ms']:.2f}", f"{f['p99_ms']:.2f}",
                         f"{vectors['over_faiss_p50'][name][level]:.2f}x"] for level, f in side["sealed"].items()]
    store_size = 100_000 if args.quick else 1_000_000
    store = store_figures(store_size, embedder, writer_alone=False)
    markdown = "\n".join([
        "# Retrieval",
        "",
        "## Backends side by side: the embedded FAISS store and Milvus",
        "",
        "`milvus` is the Milvus server itself (2.3.5 standalone, Go and C++, as the `milvus` PyPI package ships it; "
        "or the URI given), `milvus_lite` Milvus's pure-Python engine (`milvus-lite`), both on loopback, started "
        "here one after the other with nothing else running. Both are written through `MilvusStore` at its "
        "default consistency, Strong (every search waits until the server has applied every write acknowledged "
        "before it, by any replica, which Milvus learns from its time ticks: `proxy.timeTickInterval`, 200 ms by "
        "default); Session (a process sees its own writes, the guarantee the embedded store gives) does not wait "
        "for them. Rows stay in growing segments (searched without their index) until Milvus seals them, as "
        "segments fill or idle or on a flush.",
        "",
        f"NQ dev: {recall['passages']} distinct passages of {recall['questions']} questions in one namespace of "
        "each backend (all-MiniLM-L6-v2, exact search on all). The pool is the union of the questions' own "
        "candidate lists (20 each), so recall@20 is easy here: recall@1 and @5 say more. Upsert throughput "
        "includes embedding; search latency includes embedding the query.",
        "",
        markdown_table(["backend", "recall@1", "recall@5", "recall@20", "MRR@20", "upserted passages/s",
                        "search p50 ms", "search p99 ms", "search p50 ms, Session"], backend_rows),
        "",
        f"10^5 synthetic clustered vectors straight into each index (no embedder), {args.queries} single queries "
        "at k=10, exact search on all; the ratio is the p50 over the embedded flat index's.",
        "",
        markdown_table(["backend", "index", "consistency", "p50 ms", "p99 ms", "p50 vs faiss"], vector_rows),
        "",
        "## The embedded store under load",
        "",
        f"{store_size:,} chunks (`bench.store`): the store snapshots in the background while a writer and a "
        "searcher run, then the same load runs as long again with no snapshot (the control window). Each cell: "
        "snapshot window / control window, in ms. The writer alone, and 10^5 chunks: `bench/results/store.md`.",
        "",
        markdown_table(LOAD_HEADER, load_rows({store_size: store})),
        "",
        f"The worker's peak memory {store['with_searcher']['worker_peak_rss_bytes'] / 2**30:.2f} GiB beside "
        f"the server's {store['server_rss_bytes'] / 2**30:.2f} GiB. The log after compaction: "
        f"{store['log_over_live_after']:.2f}x the live data (before: {store['log_over_live_before']:.2f}x).",
        "",
        "## FAISS index types at scale",
        "",
        f"Synthetic clustered 384-dim unit vectors, {args.queries} single queries at k=10, 2 threads; speed-up = "
        "NumPy brute-force p50 / index p50, same run.",
        "",
        markdown_table(["vectors", "index", "build s", "p50 ms", "p99 ms", "recall@10", "vs NumPy"], rows),
        "",
        f"Settings: {', '.join(f'{k}: {v.describe()}' for k, v in SPECS.items() if k != 'flat')}.",
        "Plot: bench/results/retrieval.png",
    ])
    plot(sizes)
    payload = {"recall_at_5": recall["recall_at_5"], "recall_at_20": recall["recall_at_20"], "nq": recall,
               "backends": nq, "vectors_1e5": vectors, "sizes": sizes, "store": store,
               "snapshot_max_stall_ms": store["with_searcher"]["write_during"]["max_ms"],  # the issue's target
               "provenance": provenance({"quick": args.quick, "queries": args.queries,
                                         "milvus": args.milvus_uri or "Milvus 2.3.5 standalone started here"})}
    write("retrieval", payload, markdown)


if __name__ == "__main__":
    main()
