"""Retrieval: recall of the in-service index on real passages, and FAISS speed at scale.

1. Recall: every passage of the NQ dev set (20 per question, repeated passages merged) goes into
   one namespace of a real ``IndexStore`` (chunked, embedded with all-MiniLM-L6-v2, flat index);
   each question searches it; recall@k = the question's gold passage is among the top k.
2. Speed: synthetic clustered unit vectors (384-dim, like the embedder's) at 10^5 and 10^6;
   for flat, IVF and HNSW (``VectorIndex``, as the server uses it): build time, single-query
   latency p50/p99 at k=10, recall@10 against exact search, and the p50 speed-up over a plain
   NumPy brute-force search measured in the same run on the same vectors. IVF and HNSW are also
   searched wider (nprobe 64, efSearch 256) on the same index: the recall-for-latency trade.

    python -m bench.retrieval [--quick] [--queries N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace

import faiss
import numpy as np

from bench.report import RESULTS, markdown_table, progress, write
from compressor.embedding import Embedder
from compressor.retrieval.store import Document, IndexStore
from compressor.retrieval.vectors import IndexSpec, VectorIndex
from devtools.data import NQ_DEV, chunk_text, passage_id, read_rows

DIM = 384
SPECS = {"flat": IndexSpec("flat"), "ivf": IndexSpec("ivf", nlist=1024, nprobe=16),
         "hnsw": IndexSpec("hnsw", m=32, ef_construction=80, ef_search=64)}
WIDER_SEARCH = {"ivf_nprobe64": ("ivf", {"nprobe": 64}), "hnsw_ef256": ("hnsw", {"ef_search": 256})}


def nq_recall(embedder: Embedder) -> dict:
    rows = read_rows(NQ_DEV)
    passages = {passage_id(chunk_text(c)): chunk_text(c) for row in rows for c in row["chunks"]}
    with tempfile.TemporaryDirectory() as folder:
        store = IndexStore(folder, embedder, snapshot_every=10**9)
        started = time.perf_counter()
        items = list(passages.items())
        for start in range(0, len(items), 250):
            store.upsert("nq", [Document(i, t) for i, t in items[start:start + 250]])
            progress(f"nq: indexed {min(start + 250, len(items))}/{len(items)} passages")
        index_s = time.perf_counter() - started
        found = {5: 0, 20: 0}
        for row in rows:
            gold = passage_id(chunk_text(next(c for c in row["chunks"] if c["is_gold"])))
            ranked = list(dict.fromkeys(h.document_id for h in store.search("nq", row["question"], 40)))
            for k in found:
                found[k] += gold in ranked[:k]
        store.close(snapshot=False)
    return {"questions": len(rows), "passages": len(passages), "index_s": round(index_s, 1),
            "recall_at_5": found[5] / len(rows), "recall_at_20": found[20] / len(rows)}


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
    args = parser.parse_args()
    faiss.omp_set_num_threads(2)
    embedder = Embedder()
    recall = nq_recall(embedder)
    progress(f"nq recall@5 {recall['recall_at_5']:.2f}, recall@20 {recall['recall_at_20']:.2f}")
    rng = np.random.default_rng(0)
    sizes = {str(size): speed(size, args.queries, rng) for size in ([100_000] if args.quick else [100_000, 1_000_000])}
    rows = [[f"{int(size):,}", kind, f"{r['build_s']:.1f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
             f"{r['recall_at_10']:.3f}", f"{r['speedup_vs_numpy']:.1f}x"]
            for size, results in sizes.items() for kind, r in results.items()]
    markdown = "\n".join([
        "# Retrieval",
        "",
        f"NQ dev: {recall['passages']} distinct passages of {recall['questions']} questions in one index "
        f"(all-MiniLM-L6-v2, flat, indexed in {recall['index_s']} s): recall@5 **{recall['recall_at_5']:.2f}**, "
        f"recall@20 **{recall['recall_at_20']:.2f}** (gold passage among the hits).",
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
               "sizes": sizes}
    write("retrieval", payload, markdown)


if __name__ == "__main__":
    main()
