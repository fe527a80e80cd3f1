"""Service throughput and latency on loopback with real payloads, at concurrency 1, 4 and 8.

Starts a real server (default model, default settings but a queue deep enough for the load) in
this process, then for each concurrency runs that many client threads, each sending NQ questions
(20 Wikipedia passages, rate 1/4) back to back for a fixed number of requests. The batching gain
is throughput at 8 over throughput at 1, measured in the same run.

    python -m bench.service [--requests 24] [--data ../shared/data/nq_multidoc_dev.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bench.quality import DEFAULT_DATA
from bench.report import markdown_table, progress, write
from compressor.client import FocalClient
from compressor.service.server import FocalServer
from compressor.service.settings import Settings


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=24, help="requests per concurrency level")
    parser.add_argument("--data", default=str(DEFAULT_DATA["nq"]))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    payloads = [(row["question"], [(str(i), f"{c['title']}\n{c['text']}") for i, c in enumerate(row["chunks"])])
                for row in rows]
    server = FocalServer(Settings(port=0, metrics_port=0, queue_depth=64, max_batch=8)).start()
    target = f"127.0.0.1:{server.port}"
    figures: dict[str, dict[str, float]] = {}
    try:
        with FocalClient(target) as warm:
            warm.compress(*payloads[0], rate=0.25)
        for concurrency in (1, 4, 8):
            latencies: list[float] = []

            def worker(offset: int, latencies=latencies, concurrency=concurrency) -> None:
                with FocalClient(target, timeout=600) as client:
                    for number in range(offset, args.requests, concurrency):
                        question, chunks = payloads[number % len(payloads)]
                        started = time.perf_counter()
                        client.compress(question, chunks, rate=0.25)
                        latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(worker, range(concurrency)))
            elapsed = time.perf_counter() - started
            figures[str(concurrency)] = {"rps": len(latencies) / elapsed,
                                         "p50_ms": statistics.median(latencies) * 1000,
                                         "p95_ms": percentile(latencies, 0.95) * 1000}
            progress(f"concurrency {concurrency}: {figures[str(concurrency)]}")
    finally:
        server.drain()
    gain = figures["8"]["rps"] / figures["1"]["rps"]
    rows_md = [[c, f"{f['rps']:.2f}", f"{f['p50_ms']:.0f}", f"{f['p95_ms']:.0f}"] for c, f in figures.items()]
    markdown = (f"# Service on loopback (default model, CPU, {args.threads} threads, NQ 20 passages, rate 1/4, "
                f"{args.requests} requests per level)\n\n"
                + markdown_table(["concurrency", "requests/s", "p50 ms", "p95 ms"], rows_md)
                + f"\n\nBatching gain (throughput at 8 / at 1): {gain:.2f}x\n")
    write("service", {"rps": {c: f["rps"] for c, f in figures.items()},
                      "p50_ms": {c: f["p50_ms"] for c, f in figures.items()},
                      "p95_ms": {c: f["p95_ms"] for c, f in figures.items()},
                      "batching_gain": gain}, markdown)


if __name__ == "__main__":
    main()
