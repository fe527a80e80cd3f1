"""Compression quality side by side: Focal's methods, LLMLingua, LongLLMLingua and baselines.

For every question of each data set and every rate, each method compresses the same context (the
chunks as "title\\ntext", joined by blank lines) to the same budget, counted in the default
model's tokens. Reported per method: answer recall (NQ: a normalised gold answer occurs in the
compressed context; code: the gold function name occurs as a whole identifier), gold-chunk
retention (at least half of the gold chunk's distinct words of 4+ characters survive), tokens
actually used, and seconds per question. Peers are described in ``bench.peers``.

    python -m bench.quality [--limit N] [--data NAME=PATH ...] [--rates 0.5,0.25,0.125]
"""

from __future__ import annotations

import argparse
import json
import re
import string
import time
from collections import defaultdict
from pathlib import Path

import torch

from bench import peers
from bench.report import RESULTS, markdown_table, progress, write
from compressor.compression.pipeline import Compressor
from compressor.compression.request import Chunk, CompressRequest
from devtools.data import CODE_DEV, NQ_DEV
from engine import Engine
from engine.device import preferred_dtype

DEFAULT_DATA = {"nq": NQ_DEV, "code": CODE_DEV}
ALL_METHODS = ("focal_token", "focal_sentence", "focal_chunk", "llmlingua", "longllmlingua",
               "truncate", "random", "embed_sentences")


def normalize(text: str) -> str:
    """Lost in the Middle's answer normalisation: lowercase, no punctuation, no articles."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_found(name: str, row: dict, context: str) -> bool:
    if name == "code":
        return re.search(rf"(?<![A-Za-z0-9_]){re.escape(row['answers'][0])}(?![A-Za-z0-9_])", context) is not None
    normal = normalize(context)
    return any(normalize(answer) in normal for answer in row["answers"] if normalize(answer))


def gold_retained(row: dict, context: str) -> bool:
    gold = next(c for c in row["chunks"] if c["is_gold"])
    words = {w for w in re.findall(r"\w+", gold["text"].lower()) if len(w) >= 4}
    present = set(re.findall(r"\w+", context.lower()))
    return bool(words) and len(words & present) >= 0.5 * len(words)


def load_rows(path: Path, limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="first N questions of each set")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=PATH", help="replace the default sets")
    parser.add_argument("--rates", default="0.5,0.25,0.125")
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = dict(item.split("=", 1) for item in args.data) if args.data else DEFAULT_DATA
    rates = [float(r) for r in args.rates.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    dtype = preferred_dtype()

    engine = Engine.load(dtype=dtype)
    focal = Compressor(engine)
    lingua = peers.llmlingua_compressor(engine, dtype) if {"llmlingua", "longllmlingua"} & set(methods) else None
    embedder = peers.EmbeddingSentences() if "embed_sentences" in methods else None

    def run(method: str, row: dict, chunks: list[str], rate: float, budget: int, seed: int) -> str:
        question = row["question"]
        if method.startswith("focal_"):
            request = CompressRequest(question, [Chunk(str(i), c) for i, c in enumerate(chunks)], rate=rate,
                                      method=method.removeprefix("focal_"))
            return peers.strip_question(focal.compress(request).prompt, f"Question: {question}")
        if method == "llmlingua":
            return peers.run_llmlingua(lingua, question, chunks, rate)
        if method == "longllmlingua":
            return peers.run_longllmlingua(lingua, question, chunks, rate)
        if method == "truncate":
            return peers.truncate(engine, chunks, budget)
        if method == "random":
            return peers.random_tokens(engine, chunks, budget, seed)
        return embedder(engine, question, chunks, budget)

    results: dict[str, dict] = {}
    for name, path in data.items():
        rows = load_rows(Path(path), args.limit)
        sums: dict[tuple[float, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        started = time.perf_counter()
        for number, row in enumerate(rows):
            chunks = [f"{c['title']}\n{c['text']}" for c in row["chunks"]]
            original = len(engine.encode("\n\n".join(chunks)))
            for rate in rates:
                budget = int(rate * original)
                for method in methods:
                    clock = time.perf_counter()
                    context = run(method, row, chunks, rate, budget, seed=number)
                    stats = sums[(rate, method)]
                    stats["seconds_per_question"] += time.perf_counter() - clock
                    stats["answer_recall"] += answer_found(name, row, context)
                    stats["gold_retention"] += gold_retained(row, context)
                    stats["tokens"] += len(engine.encode(context))
                    stats["budget"] += budget
            elapsed = time.perf_counter() - started
            progress(f"{name}: {number + 1}/{len(rows)} questions, {elapsed:.0f}s, "
                     f"~{elapsed / (number + 1) * (len(rows) - number - 1):.0f}s left")
        results[name] = {"questions": len(rows), "rates": {
            str(rate): {method: {k: v / len(rows) for k, v in sums[(rate, method)].items()} for method in methods}
            for rate in rates}}
    markdown = report(results, rates, methods, dtype)
    plot(results, rates, methods)
    write("quality", results, markdown)


def report(results: dict, rates: list[float], methods: list[str], dtype: torch.dtype) -> str:
    parts = [f"# Compression quality (default model SmolLM2-135M-Instruct, {str(dtype).removeprefix('torch.')}, "
             "CPU, 2 threads)\n",
             "Peers use the same weights (a transformers folder written from the same GGUF) and the same "
             "dtype; llmlingua's tiktoken and nltk downloads are replaced by the SmolLM2 tokenizer and "
             "Focal's sentence splitter, and its legacy KV-cache lists are converted at the model call "
             "(see bench/peers.py). Tokens are the default model's.\n",
             "Plot: bench/results/quality.png\n"]
    for name, result in results.items():
        parts.append(f"## {name} ({result['questions']} questions)\n")
        rows = []
        for rate in rates:
            for method in methods:
                m = result["rates"][str(rate)][method]
                rows.append([f"1/{round(1 / rate)}", method, f"{m['answer_recall']:.3f}", f"{m['gold_retention']:.3f}",
                             f"{m['tokens']:.0f} / {m['budget']:.0f}", f"{m['seconds_per_question']:.2f}"])
        parts.append(markdown_table(["rate", "method", "answer recall", "gold retention", "tokens / budget",
                                     "s/question"], rows) + "\n")
    return "\n".join(parts)


def plot(results: dict, rates: list[float], methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for axis, (name, result) in zip(axes[0], results.items()):
        for method in methods:
            recall = [result["rates"][str(rate)][method]["answer_recall"] for rate in rates]
            style = "-o" if method.startswith("focal_") else "--."
            axis.plot([1 / r for r in rates], recall, style, label=method)
        axis.set_xscale("log", base=2)
        axis.set_xticks([1 / r for r in rates], [f"{round(1 / r)}x" for r in rates])
        axis.set_xlabel("compression (fewer tokens)")
        axis.set_ylabel("answer recall")
        axis.set_ylim(0, 1.02)
        axis.set_title(f"{name} ({result['questions']} questions)")
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(RESULTS / "quality.png", dpi=120)


if __name__ == "__main__":
    main()
