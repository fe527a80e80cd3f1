"""Tuning the compressor's ranking and sentence selection on dev questions 1-50 of each shared set
(``bench.quality`` reports questions 51-100, which tuning never sees).

The expensive signals are computed once per question, as the pipeline computes them: the
embedder's similarity of every sentence (code: line) and of every chunk's opening to the question,
the model's question likelihood for every chunk that is among the ``MAX_CANDIDATES`` the
embedder ranks highest under some weighting of the grid (among all chunks, and among those
without a code header), and the model's likelihood of the question as the documentation of
every code chunk's header. Every setting of the grid
is then replayed with the pipeline's own functions (``relevance.fuse``, ``units.score_sentences``,
``units.choose_sentences``, ``units.render``) at rates 1/4 and 1/8; the replay skips only the
final exact trim to the budget, which the benchmark applies. The adaptive threshold is swept the
same way (tokens kept against answers kept). The chosen setting maximises mean answer recall over
the four cells among settings where the model reads at most ``--max-model-tokens`` per question
on average in each set: the language model's forward pass costs several times the embedder's per
token, and the time bar (at most 1.5x the embedding baseline's time per question in
``bench.quality``) leaves room for only a few hundred model tokens on the 2-core CPU we measure on. The embedder's pass
over the chunks' openings costs in proportion to their length, so the opening is bounded too
(``--max-head-chars``; at 384 characters the time bar was missed). Ties go to fewer model tokens,
then to shorter openings, then to the current default.

    python -m bench.tune [--questions 50] [--max-model-tokens 600] [--max-head-chars 256]
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import itertools
import pickle
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from bench.peers import CACHE
from bench.quality import DEFAULT_DATA, TUNING_QUESTIONS, answer_found
from bench.report import RESULTS, markdown_table, progress, provenance, write
from compressor.compression import relevance
from compressor.compression.pipeline import Tuning
from compressor.compression.relevance import ChunkSentences
from compressor.compression.scoring import ChunkTokens, SignalScorer, question_suffix
from compressor.compression.units import choose_sentences, render, score_sentences
from compressor.embedding import Embedder
from devtools.data import chunk_text, read_rows
from engine import Engine
from engine.device import preferred_dtype

MAX_CANDIDATES = 6
RATES = (0.25, 0.125)
# Narrowed where the previous 864-setting run found nothing better within its bounds than the value
# kept (mean weight 0.5, head weight 1, 256-character openings, 4 candidates, window 64 and likelihood
# weight 2.0 tied at best; no candidates lost), so that the code-header knobs fit a grid that replays
# in minutes.
GRID = {"mean_weight": (0.0,), "head_weight": (2.0,), "head_chars": (192,),
        "candidates": (2, 3), "window": (32, 48), "likelihood_weight": (0.5, 1.0),
        "documentation_weight": (0.0, 1.0, 1.5, 2.0, 3.0), "documented": (12, 16, 20),
        "chunk_weight": (0.5, 1.0)}
SHOWN = 40  # settings listed in the report, best first
THRESHOLDS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5)


@dataclass
class Signals:
    row: dict
    texts: list[str]
    tokens: list[ChunkTokens]
    sentences: list[ChunkSentences]  # with the openings of the first length in GRID["head_chars"]
    heads: dict[int, list[float]]  # opening length -> each chunk's opening similarity
    likelihood: dict[int, dict[int, float]]  # window -> the model's question likelihood, for the candidates
    original: int
    question_tokens: int  # what the model reads after each candidate: "\n\nQuestion: ..."
    documentation: dict[int, float] = field(default_factory=dict)  # code chunk -> question-as-docs likelihood
    documentation_tokens: dict[int, int] = field(default_factory=dict)  # code chunk -> header + docs tokens read


def signals(engine: Engine, scorer: SignalScorer, embedder: Embedder, row: dict) -> Signals:
    texts = [chunk_text(c) for c in row["chunks"]]
    tokens = scorer.tokenize(texts)
    sentences = relevance.embed_sentences(embedder, row["question"], texts, GRID["head_chars"][0])
    heads = {length: relevance.opening_similarity(embedder, row["question"], texts, length)[1]
             for length in GRID["head_chars"]}
    signals = Signals(row, texts, tokens, sentences, heads, {}, len(engine.encode("\n\n".join(texts))), 0)
    complete(scorer, signals)
    return signals


def sentences_of(s: Signals, head_chars: int) -> dict[int, ChunkSentences]:
    """The chunks' scored units with their openings of ``head_chars`` characters."""
    return {i: replace(chunk, head=head) for i, (chunk, head) in enumerate(zip(s.sentences, s.heads[head_chars]))}


def embedder_order(s: Signals, tuning: Tuning) -> list[int]:
    scores = relevance.embedder_scores(sentences_of(s, tuning.head_chars), tuning.mean_weight, tuning.head_weight)
    return relevance.by_embedder(scores)


def complete(scorer: SignalScorer, s: Signals) -> None:
    """The model's question likelihood, for every window of the grid, of every chunk some weighting
    of the grid puts among the embedder's ``MAX_CANDIDATES`` best, where ``s`` lacks it."""
    s.question_tokens = len(scorer.engine.encode(question_suffix(s.row["question"])))
    if not s.documentation:
        everything = list(range(len(s.texts)))
        reads, _ = relevance.readings(s.row["question"], everything, s.texts, s.tokens, dict(enumerate(s.sentences)),
                                      0, 0, len(everything))
        if reads:
            scorer.coarse(list(reads.values()), "", plain=False)
        s.documentation = {i: view.relevance for i, (view, _) in reads.items()}
        s.documentation_tokens = {i: len(view.ids) + len(scorer.engine.encode(suffix))
                                  for i, (view, suffix) in reads.items()}
    wanted = set()
    for mean, head, chars in itertools.product(GRID["mean_weight"], GRID["head_weight"], GRID["head_chars"]):
        order = embedder_order(s, Tuning(mean_weight=mean, head_weight=head, head_chars=chars))
        wanted.update(order[:MAX_CANDIDATES], [i for i in order if i not in s.documentation][:MAX_CANDIDATES])
    for window in GRID["window"]:
        missing = sorted(wanted - set(s.likelihood.get(window, {})))
        if missing:
            views = [relevance.model_view(s.tokens[i], s.sentences[i], window) for i in missing]
            scorer.coarse([(view, question_suffix(s.row["question"])) for view in views], "", plain=False)
            s.likelihood.setdefault(window, {}).update({i: view.relevance for i, view in zip(missing, views)})


def cached_signals(engine: Engine, questions: int) -> dict[str, list[Signals]]:
    """Signals of the first ``questions`` of each set, computed once per data, model and pipeline
    code (bench/.cache): re-running the grid after a change to this file costs seconds."""
    source = b"".join(p.read_bytes() for p in (*DEFAULT_DATA.values(), *map(_module_file, (relevance, SignalScorer))))
    key = hashlib.sha1(source + f"{questions}/{MAX_CANDIDATES}/{engine.config}".encode()).hexdigest()[:16]
    path = CACHE / f"tune-signals-{key}.pkl"
    scorer = SignalScorer(engine)
    if path.exists():  # computed before: add what a wider grid needs
        data = pickle.loads(path.read_bytes())
        for name, rows in data.items():
            for number, s in enumerate(rows, 1):
                complete(scorer, s)
                progress(f"signals {name}: {number}/{len(rows)} (completed)")
        path.write_bytes(pickle.dumps(data))
        return data
    embedder = Embedder()
    data: dict[str, list[Signals]] = {}
    started = time.perf_counter()
    for name, data_path in DEFAULT_DATA.items():
        rows = read_rows(data_path)[:questions]
        data[name] = []
        for number, row in enumerate(rows, 1):
            data[name].append(signals(engine, scorer, embedder, row))
            progress(f"signals {name}: {number}/{len(rows)}, {time.perf_counter() - started:.0f}s")
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data))
    return data


def _module_file(thing: object) -> Path:
    return Path(inspect.getfile(thing))


def read_by_model(s: Signals, tuning: Tuning, order: list[int]) -> tuple[list[int], list[int]]:
    """The chunks the pipeline has the model read: prose candidates, and documented code headers."""
    return relevance.model_reads(order, s.documentation.__contains__, tuning.candidates,
                                 tuning.documented if tuning.documentation_weight else 0)


def replay(s: Signals, tuning: Tuning, budget: int, threshold: float | None = None) -> str:
    sentences = sentences_of(s, tuning.head_chars)
    embedding = relevance.embedder_scores(sentences, tuning.mean_weight, tuning.head_weight)
    prose, documented = read_by_model(s, tuning, relevance.by_embedder(embedding))
    scores = relevance.fuse(embedding, [({i: s.likelihood[tuning.window][i] for i in prose}, tuning.likelihood_weight),
                                        ({i: s.documentation[i] for i in documented}, tuning.documentation_weight)])
    units = score_sentences(s.texts, s.tokens, sentences, scores, tuning.chunk_weight)
    kept = choose_sentences(units, budget, threshold)
    return "\n\n".join(render(s.texts[i], units[i], kept[i]) for i in sorted(kept))


def model_tokens(s: Signals, tuning: Tuning) -> int:
    """Tokens the model reads for one question under ``tuning``."""
    prose, documented = read_by_model(s, tuning, embedder_order(s, tuning))
    return (sum(min(len(s.tokens[i].ids), tuning.window or len(s.tokens[i].ids)) + s.question_tokens for i in prose)
            + sum(s.documentation_tokens[i] for i in documented))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=TUNING_QUESTIONS, help="first N dev questions per set")
    parser.add_argument("--max-model-tokens", type=int, default=600,
                        help="the most tokens per question the chosen setting may have the model read (mean, per set)")
    parser.add_argument("--max-head-chars", type=int, default=256,
                        help="the longest chunk opening the chosen setting may have the embedder read")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.questions > TUNING_QUESTIONS:
        parser.error(f"questions after {TUNING_QUESTIONS} are the reported half: tune on at most {TUNING_QUESTIONS}")
    torch.set_num_threads(args.threads)
    engine = Engine.load(dtype=preferred_dtype())
    data = cached_signals(engine, args.questions)

    default = Tuning()
    grid = []
    settings = list(itertools.product(*GRID.values()))
    for number, values in enumerate(settings, 1):
        if number % 50 == 0 or number == len(settings):
            progress(f"grid: {number}/{len(settings)} settings replayed")
        tuning = replace(default, **dict(zip(GRID, values)))
        cells = {f"{name} 1/{round(1 / rate)}": sum(
            answer_found(name, s.row, replay(s, tuning, int(rate * s.original))) for s in rows) / len(rows)
            for name, rows in data.items() for rate in RATES}
        read = {name: statistics.fmean(model_tokens(s, tuning) for s in rows) for name, rows in data.items()}
        grid.append({**dict(zip(GRID, values)), "cells": cells, "mean": sum(cells.values()) / len(cells),
                     "model_tokens": max(read.values()), "model_tokens_by_set": read})
    allowed = [g for g in grid if g["model_tokens"] <= args.max_model_tokens and g["head_chars"] <= args.max_head_chars]
    chosen = max(allowed, key=lambda g: (round(g["mean"], 6), -g["model_tokens"], -g["head_chars"],
                                         all(g[k] == getattr(default, k) for k in GRID)))
    adaptive = []
    tuned = replace(default, **{k: chosen[k] for k in GRID})
    for threshold in THRESHOLDS:
        entry = {"threshold": threshold}
        for name, rows in data.items():
            contexts = [replay(s, tuned, s.original, threshold) for s in rows]
            found = sum(answer_found(name, s.row, c) for s, c in zip(rows, contexts))
            entry[name] = {"answer_recall": found / len(rows),
                           "tokens": sum(len(engine.encode(c)) for c in contexts) / len(rows),
                           "original": sum(s.original for s in rows) / len(rows)}
        adaptive.append(entry)
    # The adaptive threshold keeps as few tokens as it can while every set keeps at least the answers
    # the chosen setting keeps at rate 1/4.
    floor = {name: chosen["cells"][f"{name} 1/4"] for name in data}
    enough = [a["threshold"] for a in adaptive if all(a[name]["answer_recall"] >= floor[name] for name in data)]
    threshold = max(enough, default=min(THRESHOLDS))
    payload = {"questions": args.questions, "grid": grid,
               "chosen": {**{k: chosen[k] for k in GRID}, "adaptive_threshold": threshold},
               "max_model_tokens": args.max_model_tokens, "max_head_chars": args.max_head_chars,
               "adaptive": adaptive, "provenance": provenance({"grid": GRID, "thresholds": THRESHOLDS,
                                                              "rates": RATES, "max_candidates": MAX_CANDIDATES})}
    plot(adaptive, list(data))
    write("tune", payload, report(payload))


def report(payload: dict) -> str:
    source = payload["provenance"]
    cells = list(payload["grid"][0]["cells"])
    rows = [[str(g["mean_weight"]), str(g["head_weight"]), str(g["head_chars"]), str(g["candidates"]), str(g["window"]),
             str(g["documentation_weight"]), str(g["documented"]),
             " / ".join(f"{n:.0f}" for n in g["model_tokens_by_set"].values()), str(g["likelihood_weight"]),
             str(g["chunk_weight"]),
             *[f"{g['cells'][c]:.2f}" for c in cells], f"{g['mean']:.3f}"]
            for g in sorted(payload["grid"], key=lambda g: -g["mean"])[:SHOWN]]
    names = [k for k in payload["adaptive"][0] if k != "threshold"]
    adaptive = [[str(a["threshold"]), *[f"{a[n]['answer_recall']:.2f} at {a[n]['tokens']:.0f} / {a[n]['original']:.0f}"
                                        for n in names]] for a in payload["adaptive"]]
    return "\n".join([
        f"# Tuning on dev questions 1-{payload['questions']} (answer recall, sentence method)\n",
        f"Commit `{source['commit']}`{' (with uncommitted changes)' if source['uncommitted_changes'] else ''}, "
        f"{source['date']}. Chosen among settings where the model reads at most {payload['max_model_tokens']} "
        f"tokens per question (mean, in each set) and the embedder at most {payload['max_head_chars']} "
        f"characters of each chunk's opening: {payload['chosen']} (see `Tuning` in "
        f"compressor/compression/pipeline.py). N = "
        f"{payload['questions']} per set: one question is {1 / payload['questions']:.2f}.\n",
        f"The {SHOWN} best of {len(payload['grid'])} settings (all of them: bench/results/tune.json).\n",
        markdown_table(["mean weight", "head weight", "opening chars", "candidates", "window", "documentation weight",
                        "code headers read", f"tokens the model reads ({' / '.join(names)})",
                        "likelihood weight", "chunk weight", *cells, "mean"], rows) + "\n",
        "## Adaptive threshold (with the chosen setting): recall at tokens kept / original\n",
        "Chosen: the highest threshold (fewest tokens) at which every set keeps at least the answers the "
        "chosen setting keeps at rate 1/4.\n",
        "Plot: bench/results/tune.png\n",
        markdown_table(["threshold", *names], adaptive) + "\n",
    ])


def plot(adaptive: list[dict], names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for name in names:
        axis.plot([a[name]["tokens"] / a[name]["original"] for a in adaptive],
                  [a[name]["answer_recall"] for a in adaptive], "-o", label=name)
        for a in adaptive:
            axis.annotate(str(a["threshold"]), (a[name]["tokens"] / a[name]["original"], a[name]["answer_recall"]),
                          fontsize=7)
    axis.set_xlabel("fraction of the context kept")
    axis.set_ylabel("answer recall")
    axis.set_title("Adaptive budget: threshold sweep on dev questions 1-50")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(RESULTS / "tune.png", dpi=120)


if __name__ == "__main__":
    main()
