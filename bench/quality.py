"""Compression quality side by side: Focal's methods, LLMLingua, LongLLMLingua and baselines.

For every question of each data set and every rate, each method compresses the same context (the
chunks as "title\\ntext") to the same budget, ``int(rate x tokens of the chunks joined by blank
lines)``, counted in the default model's tokens; Focal's methods and the baselines (the embedding
baseline included) are cut to that budget exactly, LLMLingua and LongLLMLingua are given the same
rate (their tokens column shows what they used). Reported per method, each with its 95% Wilson
interval and N:

- answer recall: NQ, a normalised gold answer occurs in the compressed context; code, the gold
  function name occurs as a whole identifier;
- gold retention: the answer-bearing unit of the gold chunk (the sentence or code line that holds
  the answer) survives mostly intact: at least 80% of its word pairs occur in the compressed
  context (a method that keeps scattered words keeps the answer's words, not its sentence);
- tokens actually used, and seconds per question (all methods run one after another in this
  process, on the same threads).

Focal's defaults were tuned on questions 1-50 of the shared dev sets (``python -m bench.tune``);
this benchmark reports questions 51-100 of those sets. Files given with ``--data`` are reported
from their first question. The default method is also reported as ``focal_default``, and the
adaptive budget (no rate: keep what is relevant) as an ``adaptive`` entry per set. Peers are
described in ``bench.peers``.

    python -m bench.quality [--limit N] [--data NAME=PATH ...] [--rates 0.25,0.125] [--methods ...]
"""

from __future__ import annotations

import argparse
import math
import re
import string
import time
from collections import defaultdict
from pathlib import Path

import torch

from bench import peers
from bench.report import RESULTS, markdown_table, progress, provenance, write
from compressor.compression.pipeline import Compressor, Tuning
from compressor.compression.request import DEFAULT_METHOD, Chunk, CompressRequest
from compressor.embedding import Embedder
from compressor.text import segment
from devtools.data import CODE_DEV, NQ_DEV, chunk_text, read_rows
from engine import Engine
from engine.device import preferred_dtype

DEFAULT_DATA = {"nq": NQ_DEV, "code": CODE_DEV}
TUNING_QUESTIONS = 50  # questions 1-50 of the shared dev sets tune Focal; 51-100 are reported
ALL_METHODS = ("focal_token", "focal_sentence", "focal_chunk", "focal_digest", "llmlingua", "longllmlingua",
               "truncate", "random", "embed_sentences")
DEFAULT_ALIAS = "focal_default"
ADAPTIVE = "focal_adaptive"
RETENTION_PAIRS = 0.8


def normalize(text: str) -> str:
    """Lost in the Middle's answer normalisation: lowercase, no punctuation, no articles."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _identifier(name: str) -> re.Pattern:
    return re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])")


def answer_found(name: str, row: dict, context: str) -> bool:
    if name == "code":
        return _identifier(row["answers"][0]).search(context) is not None
    normal = normalize(context)
    return any(normalize(answer) in normal for answer in row["answers"] if normalize(answer))


def answer_unit(name: str, row: dict) -> str:
    """The sentence (code: line) of the gold chunk that holds the answer; the whole gold chunk when
    no single unit does (an answer that spans a sentence break)."""
    gold = chunk_text(next(c for c in row["chunks"] if c["is_gold"]))
    units = [s.text(gold) for s in (segment.lines(gold) if name == "code" else segment.sentences(gold))]
    for unit in units:
        if answer_found(name, row, unit):
            return unit
    return gold


def _pairs(text: str) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    return {tuple(words[i:i + 2]) for i in range(max(len(words) - 1, 1))} if words else set()


def gold_retained(name: str, row: dict, context: str) -> bool:
    """At least ``RETENTION_PAIRS`` of the answer unit's adjacent word pairs occur in the context."""
    unit = _pairs(answer_unit(name, row))
    return bool(unit) and len(unit & _pairs(context)) >= RETENTION_PAIRS * len(unit)


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound at 0 and 1, unlike p +- 1.96 se)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def reported_rows(path: Path, shared: bool, limit: int | None) -> list[dict]:
    rows = read_rows(path)[TUNING_QUESTIONS:] if shared else read_rows(path)
    return rows[:limit] if limit else rows


def summarise(sums: dict[str, float], n: int) -> dict[str, float]:
    out = {k: v / n for k, v in sums.items()}
    for key in ("answer_recall", "gold_retention"):
        low, high = wilson(sums[key], n)
        out[f"{key}_ci"] = [low, high]
    out["n"] = n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="first N reported questions of each set")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=PATH", help="replace the default sets")
    parser.add_argument("--rates", default="0.25,0.125")
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--no-adaptive", action="store_true", help="skip the adaptive-budget entry")
    parser.add_argument("--name", default="quality", help="results file stem under bench/results/")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shared = not args.data
    data = dict(item.split("=", 1) for item in args.data) if args.data else DEFAULT_DATA
    rates = [float(r) for r in args.rates.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(ALL_METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; use some of {', '.join(ALL_METHODS)}")
    dtype = preferred_dtype()

    engine = Engine.load(dtype=dtype)
    embedder = Embedder()
    focal = Compressor(engine, embedder)
    lingua = peers.llmlingua_compressor(engine, dtype) if {"llmlingua", "longllmlingua"} & set(methods) else None

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
        return peers.embed_sentences(embedder, engine, question, chunks, budget)

    def adaptive(row: dict, chunks: list[str]) -> str:
        request = CompressRequest(row["question"], [Chunk(str(i), c) for i, c in enumerate(chunks)], adaptive=True)
        return peers.strip_question(focal.compress(request).prompt, f"Question: {row['question']}")

    results: dict[str, dict] = {}
    for name, path in data.items():
        rows = reported_rows(Path(path), shared, args.limit)
        sums: dict[tuple[float, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        adaptive_sums: dict[str, float] = defaultdict(float)
        started = time.perf_counter()

        def record(stats: dict[str, float], row: dict, context: str, seconds: float, name: str = name) -> None:
            stats["seconds_per_question"] += seconds
            stats["answer_recall"] += answer_found(name, row, context)
            stats["gold_retention"] += gold_retained(name, row, context)
            stats["tokens"] += len(engine.encode(context))

        for number, row in enumerate(rows):
            chunks = [chunk_text(c) for c in row["chunks"]]
            original = len(engine.encode("\n\n".join(chunks)))
            for rate in rates:
                budget = int(rate * original)
                for method in methods:
                    clock = time.perf_counter()
                    context = run(method, row, chunks, rate, budget, seed=number)
                    record(sums[(rate, method)], row, context, time.perf_counter() - clock)
                    sums[(rate, method)]["budget"] += budget
            if not args.no_adaptive:
                clock = time.perf_counter()
                context = adaptive(row, chunks)
                record(adaptive_sums, row, context, time.perf_counter() - clock)
                adaptive_sums["original"] += original
            elapsed = time.perf_counter() - started
            progress(f"{name}: {number + 1}/{len(rows)} questions, {elapsed:.0f}s, "
                     f"~{elapsed / (number + 1) * (len(rows) - number - 1):.0f}s left")
        per_rate = {}
        for rate in rates:
            entry = {method: summarise(sums[(rate, method)], len(rows)) for method in methods}
            if f"focal_{DEFAULT_METHOD}" in entry:
                entry[DEFAULT_ALIAS] = entry[f"focal_{DEFAULT_METHOD}"]
            per_rate[str(rate)] = entry
        results[name] = {"questions": len(rows), "first_question": TUNING_QUESTIONS + 1 if shared else 1,
                         "rates": per_rate}
        if not args.no_adaptive:
            results[name]["adaptive"] = summarise(adaptive_sums, len(rows))
    settings = {"rates": rates, "methods": methods, "data": {k: str(v) for k, v in data.items()},
                "limit": args.limit, "threads": args.threads, "dtype": str(dtype).removeprefix("torch."),
                "default_method": DEFAULT_METHOD, "tuning": vars(Tuning())}
    payload = {**results, "provenance": provenance(settings)}
    markdown = report(results, rates, methods, payload["provenance"], args.name)
    plot(results, rates, methods, args.name)
    write(args.name, payload, markdown)


def _cell(m: dict, key: str) -> str:
    low, high = m[f"{key}_ci"]
    return f"{m[key]:.3f} [{low:.2f}, {high:.2f}]"


def targets(result: dict, rates: list[float], methods: list[str]) -> list[list[str]]:
    """The issue's bar per rate: the default loses at most half the answers the embedding baseline
    and LongLLMLingua lose at the same budget, in at most 1.5x the baseline's time."""
    rows = []
    default = f"focal_{DEFAULT_METHOD}"
    for rate in rates:
        cell = result["rates"][str(rate)]
        if default not in cell:
            continue
        lost = 1 - cell[default]["answer_recall"]
        for peer in ("embed_sentences", "longllmlingua"):
            if peer in cell:
                peer_lost = 1 - cell[peer]["answer_recall"]
                rows.append([f"1/{round(1 / rate)}", f"answers lost vs {peer}", f"{lost:.3f} vs {peer_lost:.3f}",
                             "yes" if lost <= peer_lost / 2 + 1e-9 else "no"])
        if "embed_sentences" in cell:
            ratio = cell[default]["seconds_per_question"] / max(cell["embed_sentences"]["seconds_per_question"], 1e-9)
            rows.append([f"1/{round(1 / rate)}", "time vs embed_sentences", f"{ratio:.2f}x",
                         "yes" if ratio <= 1.5 else "no"])
    return rows


def report(results: dict, rates: list[float], methods: list[str], source: dict, name: str) -> str:
    settings = source["settings"]
    parts = [f"# Compression quality (default model SmolLM2-135M-Instruct, {settings['dtype']}, CPU, "
             f"{settings['threads']} threads)\n",
             f"Commit `{source['commit']}`{' (with uncommitted changes)' if source['uncommitted_changes'] else ''}, "
             f"{source['date']}, {source['cpus']} CPUs. Default method: `{settings['default_method']}` (also "
             f"reported as `{DEFAULT_ALIAS}`). Focal's methods and the baselines are cut to the same budget "
             "exactly; LLMLingua's are given the same rate (the tokens column shows what each used). Recall and "
             "retention carry their 95% Wilson interval. Focal was tuned on dev questions 1-50 "
             "(`python -m bench.tune`); the shared sets are reported from question 51.\n",
             "Peers use the same weights (a transformers folder written from the same GGUF) and the same dtype; "
             "llmlingua's tiktoken and nltk downloads are replaced by the SmolLM2 tokenizer and Focal's sentence "
             "splitter (see bench/peers.py). Tokens are the default model's.\n",
             f"Plot: bench/results/{name}.png\n"]
    for set_name, result in results.items():
        n, first = result["questions"], result["first_question"]
        parts.append(f"## {set_name} (N = {n}: questions {first}-{first + n - 1})\n")
        rows = []
        for rate in rates:
            for method in methods:
                m = result["rates"][str(rate)][method]
                rows.append([f"1/{round(1 / rate)}", method, _cell(m, "answer_recall"), _cell(m, "gold_retention"),
                             f"{m['tokens']:.0f} / {m['budget']:.0f}", f"{m['seconds_per_question']:.2f}"])
        if "adaptive" in result:
            m = result["adaptive"]
            rows.append(["adaptive", ADAPTIVE, _cell(m, "answer_recall"), _cell(m, "gold_retention"),
                         f"{m['tokens']:.0f} / {m['original']:.0f} (chosen / original)",
                         f"{m['seconds_per_question']:.2f}"])
        parts.append(markdown_table(["rate", "method", "answer recall [95% CI]", "gold retention [95% CI]",
                                     "tokens / budget", "s/question"], rows) + "\n")
        bar = targets(result, rates, methods)
        if bar:
            parts.append(f"Targets for `focal_{DEFAULT_METHOD}` on {set_name}:\n")
            parts.append(markdown_table(["rate", "target", "measured", "met"], bar) + "\n")
    return "\n".join(parts)


def plot(results: dict, rates: list[float], methods: list[str], name: str) -> None:
    """Recall against tokens kept: one line per method over the rates, the adaptive budget as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    for axis, (set_name, result) in zip(axes[0], results.items()):
        for method in methods:
            points = [result["rates"][str(rate)][method] for rate in rates]
            style = "-o" if method.startswith("focal_") else "--."
            axis.plot([p["tokens"] for p in points], [p["answer_recall"] for p in points], style, label=method)
        if "adaptive" in result:
            m = result["adaptive"]
            axis.plot([m["tokens"]], [m["answer_recall"]], "*", markersize=14, label=ADAPTIVE)
        axis.set_xlabel("tokens kept (mean per question)")
        axis.set_ylabel("answer recall")
        axis.set_ylim(0, 1.02)
        axis.set_title(f"{set_name} (N = {result['questions']})")
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(RESULTS / f"{name}.png", dpi=120)


if __name__ == "__main__":
    main()
