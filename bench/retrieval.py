"""Retrieval: both backends side by side on real passages, and FAISS speed at scale.

1. Backends: every passage of the NQ dev set (20 per question, repeated passages merged) goes into
   one namespace of the embedded ``IndexStore`` (flat index) and of a ``MilvusStore`` (a Milvus
   Lite server started here, or ``--milvus-uri``), both chunked and embedded with
   all-MiniLM-L6-v2; each question searches each; recall@k = the question's gold passage is among
   the top k, MRR over the top 20; upsert throughput (passages/s, embedding included) and search
   latency (query embedding included) per backend. The pool is the union of the questions' own
   candidate lists (20 each), so recall@20 is easy here: read recall@1 and @5 first.
   Then 10^5 synthetic vectors straight into each backend's index (no embedder): single-query
   search p50/p99 at k=10, exact on both.
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
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from bench.report import RESULTS, markdown_table, progress, provenance, write
from bench.store import TARGET_MS
from bench.store import measure as store_figures
from compressor.embedding import Embedder
from compressor.retrieval.contract import Document
from compressor.retrieval.milvus import MilvusConfig, MilvusStore
from compressor.retrieval.store import IndexStore
from compressor.retrieval.vectors import IndexSpec, VectorIndex
from devtools.data import NQ_DEV, chunk_text, passage_id, read_rows
from devtools.milvus_server import MilvusLite

DIM = 384
SPECS = {"flat": IndexSpec("flat"), "ivf": IndexSpec("ivf", nlist=1024, nprobe=16),
         "hnsw": IndexSpec("hnsw", m=32, ef_construction=80, ef_search=64)}
WIDER_SEARCH = {"ivf_nprobe64": ("ivf", {"nprobe": 64}), "hnsw_ef256": ("hnsw", {"ef_search": 256})}


def nq_recall(store, name: str) -> dict:
    """Index the NQ pool into ``store`` and search it with every question."""
    rows = read_rows(NQ_DEV)
    passages = {passage_id(chunk_text(c)): chunk_text(c) for row in rows for c in row["chunks"]}
    items = list(passages.items())
    started = time.perf_counter()
    for start in range(0, len(items), 250):
        store.upsert("nq", [Document(i, t) for i, t in items[start:start + 250]])
        progress(f"{name}: indexed {min(start + 250, len(items))}/{len(items)} passages")
    index_s = time.perf_counter() - started
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
    progress(f"{name}: recall@1 {found[1] / len(rows):.2f}, @5 {found[5] / len(rows):.2f}")
    return {"questions": len(rows), "passages": len(passages), "index_s": round(index_s, 1),
            "upsert_passages_per_s": round(len(passages) / index_s, 1),
            **{f"recall_at_{k}": n / len(rows) for k, n in found.items()}, "mrr_at_20": reciprocal / len(rows),
            "search_p50_ms": round(float(np.percentile(took, 50)), 2),
            "search_p99_ms": round(float(np.percentile(took, 99)), 2)}


def milvus_vectors(uri: str, data: np.ndarray, queries: np.ndarray) -> dict:
    """``data`` straight into a Milvus collection (FLAT, inner product, as ``MilvusStore`` makes it);
    single-query search latency at k=10."""
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
        progress(f"milvus: inserted {min(start + 5000, len(data))}/{len(data)} vectors")
    insert_s = time.perf_counter() - started
    took = latencies(lambda q: client.search(table, [q[0].tolist()], limit=10, search_params={"metric_type": "IP"}),
                     queries)
    client.drop_collection(table)
    client.close()
    return {"insert_s": round(insert_s, 1), "p50_ms": round(float(np.percentile(took, 50)), 3),
            "p99_ms": round(float(np.percentile(took, 99)), 3)}


def backends(embedder: Embedder, milvus_uri: str, queries_count: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        store = IndexStore(folder, embedder, snapshot_every=10**9)
        embedded = nq_recall(store, "faiss")
        store.close(snapshot=False)
    milvus = MilvusStore(MilvusConfig(milvus_uri), embedder)
    shared = nq_recall(milvus, "milvus")
    milvus.close()
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((2000, DIM), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    data, queries = clustered(100_000, rng, centers), clustered(queries_count, rng, centers)
    index = VectorIndex(DIM, SPECS["flat"])
    index.add(np.arange(len(data), dtype=np.int64), data)
    took = latencies(lambda q: index.search(q, 10), queries)
    flat = {"p50_ms": round(float(np.percentile(took, 50)), 3), "p99_ms": round(float(np.percentile(took, 99)), 3)}
    vectors = milvus_vectors(milvus_uri, data, queries)
    progress(f"10^5 vectors: faiss flat p50 {flat['p50_ms']:.2f} ms, milvus p50 {vectors['p50_ms']:.2f} ms")
    return {"nq": {"faiss": embedded, "milvus": shared},
            "vectors_1e5": {"faiss_flat": flat, "milvus_flat": vectors,
                            "milvus_over_faiss_p50": round(vectors["p50_ms"] / flat["p50_ms"], 2)}}


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
                        help="a running Milvus (default: a Milvus Lite server started here)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(2)
    embedder = Embedder()
    server = None
    if not args.milvus_uri:
        folder = Path(tempfile.mkdtemp(prefix="focal-milvus-"))
        server = MilvusLite(folder / "data", folder / "milvus.log").start()
        progress(f"milvus lite on {server.uri}, log {folder / 'milvus.log'}")
    try:
        compared = backends(embedder, args.milvus_uri or server.uri, args.queries)
    finally:
        if server is not None:
            server.stop()
    recall = compared["nq"]["faiss"]
    rng = np.random.default_rng(0)
    sizes = {str(size): speed(size, args.queries, rng) for size in ([100_000] if args.quick else [100_000, 1_000_000])}
    rows = [[f"{int(size):,}", kind, f"{r['build_s']:.1f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
             f"{r['recall_at_10']:.3f}", f"{r['speedup_vs_numpy']:.1f}x"]
            for size, results in sizes.items() for kind, r in results.items()]
    backend_rows = [[name, f"{r['recall_at_1']:.2f}", f"{r['recall_at_5']:.2f}", f"{r['recall_at_20']:.2f}",
                     f"{r['mrr_at_20']:.3f}", f"{r['upsert_passages_per_s']:.0f}", f"{r['search_p50_ms']:.1f}",
                     f"{r['search_p99_ms']:.1f}"] for name, r in compared["nq"].items()]
    vectors = compared["vectors_1e5"]
    store_size = 100_000 if args.quick else 1_000_000
    store = store_figures(store_size, embedder)
    markdown = "\n".join([
        "# Retrieval",
        "",
        "## Backends side by side: the embedded FAISS store and Milvus",
        "",
        f"NQ dev: {recall['passages']} distinct passages of {recall['questions']} questions in one namespace of "
        "each backend (all-MiniLM-L6-v2, exact search on both). The pool is the union of the questions' own "
        "candidate lists (20 each), so recall@20 is easy here: recall@1 and @5 say more. Upsert throughput "
        "includes embedding; search latency includes embedding the query.",
        "",
        markdown_table(["backend", "recall@1", "recall@5", "recall@20", "MRR@20", "upserted passages/s",
                        "search p50 ms", "search p99 ms"], backend_rows),
        "",
        f"10^5 synthetic clustered vectors straight into each index (no embedder), {args.queries} single queries "
        f"at k=10: FAISS flat p50 {vectors['faiss_flat']['p50_ms']:.2f} ms / p99 {vectors['faiss_flat']['p99_ms']:.2f}"
        f" ms; Milvus FLAT p50 {vectors['milvus_flat']['p50_ms']:.2f} ms / p99 {vectors['milvus_flat']['p99_ms']:.2f}"
        f" ms (Milvus Lite on loopback unless a URI was given), **{vectors['milvus_over_faiss_p50']:.2f}x** the "
        "embedded index's p50.",
        "",
        "## The embedded store under load",
        "",
        f"{store_size:,} chunks, a writer and a searcher running while the store snapshots in the background "
        f"(`bench.store`): the longest write took {store['write_max_stall_ms']:.0f} ms during the snapshot "
        f"({store['write_max_outside_ms']:.0f} ms outside it; {store['writes_over_target']} of "
        f"{store['writes_during']} writes during it took over {TARGET_MS} ms), the longest search "
        f"{store['search_max_stall_ms']:.0f} ms ({store['search_max_outside_ms']:.0f} ms); the snapshot held the "
        f"store's lock {store['longest_lock_hold_ms']:.1f} ms at most (noting where the log stands; a worker process "
        f"rebuilds the snapshot from the files, peak {store['worker_peak_rss_bytes'] / 2**30:.2f} GiB resident beside"
        f" the server's {store['server_rss_bytes'] / 2**30:.2f} GiB). The log after compaction: "
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
               "backends": compared, "sizes": sizes, "store": store,
               "snapshot_max_stall_ms": store["write_max_stall_ms"],  # the issue's target: the longest write
               "provenance": provenance({"quick": args.quick, "queries": args.queries,
                                         "milvus": "given URI" if args.milvus_uri else "Milvus Lite started here"})}
    write("retrieval", payload, markdown)


if __name__ == "__main__":
    main()
