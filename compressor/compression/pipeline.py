"""Query-aware compression of retrieved chunks: coarse ranking, a budget controller, fine selection.

Methods:
- ``token``: rank chunks, give admitted chunks an allotment by rank, keep each chunk's most
  informative words (surprisal given the question, boosted where the question raised the
  probability); code chunks keep whole lines and their signatures.
- ``sentence``: the same with whole sentences (lines for code).
- ``chunk``: rank and keep whole chunks while they fit; no edits inside a chunk.

The budget bounds the tokens of the kept context (the instruction and question are added around
it and reported separately). It is honoured exactly: after assembly the context is counted with
the engine's tokenizer and the least important units are dropped until it fits.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from compressor.compression import budget
from compressor.compression.request import ChunkResult, CompressRequest, CompressResult
from compressor.compression.scoring import ChunkTokens, SignalScorer
from compressor.compression.units import ScoredUnit, choose, render, token_importance, units_of
from engine import Engine, Interrupted


@dataclass(frozen=True)
class Tuning:
    """Knobs of the token/sentence methods (defaults tuned on the NQ and code dev sets)."""

    density: float = 0.7  # average fraction of its tokens an admitted chunk keeps
    steepness: float = 2.0  # how fast the kept fraction falls with rank (see compressor.compression.budget)
    # Weight of the question's effect on a token's probability (LongLLMLingua's contrastive score).
    # It changed no answer on the dev sets and costs the question-free log-probabilities of every
    # token, so it is off by default.
    contrast: float = 0.0


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _edges(order: list[int]) -> list[int]:
    """Most relevant first and last, least relevant in the middle (against lost-in-the-middle)."""
    front, back = order[0::2], order[1::2]
    return front + back[::-1]


@dataclass
class _Staged:
    """One request between its stages (tokenised and budgeted, waiting for the shared ranking pass)."""

    request: CompressRequest
    texts: list[str]
    tokens: list[ChunkTokens]
    original: int
    target: int
    duplicate_of: dict[int, int]
    unique: list[int]
    started: float
    timings: dict[str, float] = field(default_factory=dict)


class Compressor:
    def __init__(self, engine: Engine, tuning: Tuning | None = None) -> None:
        self.engine = engine
        self.scorer = SignalScorer(engine)
        self.tuning = tuning or Tuning()

    def count(self, text: str) -> int:
        return len(self.engine.encode(text)) if text else 0

    def compress(self, request: CompressRequest) -> CompressResult:
        return self.compress_many([request])[0]

    def compress_many(self, requests: list[CompressRequest],
                      alive: Callable[[CompressRequest], bool] = lambda _: True) -> list[CompressResult | None]:
        """Compress several requests; their coarse passes share batched forward passes (grouped by
        instruction, the shared prefix). Each result's timings are its own stages, except ``rank``,
        which is the shared pass. A request for which ``alive`` turns false is dropped within one engine
        batch or prefill chunk and gets None."""
        for request in requests:
            request.validate()
        jobs = [self._prepare(request) for request in requests]
        by_instruction: dict[str, list[_Staged]] = {}
        for job in jobs:
            if alive(job.request):
                by_instruction.setdefault(job.request.options.instruction, []).append(job)
        ranked: set[int] = set()
        for instruction, group in by_instruction.items():
            started = time.perf_counter()
            try:
                self.scorer.coarse([([job.tokens[i] for i in job.unique], job.request.query) for job in group],
                                   instruction, plain=self.tuning.contrast != 0,
                                   stop=lambda group=group: not any(alive(job.request) for job in group))
            except Interrupted:
                continue  # every request of the group was abandoned
            for job in group:
                job.timings["rank"] = time.perf_counter() - started
                ranked.add(id(job))
        return [self._finish(job, alive) if id(job) in ranked and alive(job.request) else None for job in jobs]

    def _prepare(self, request: CompressRequest) -> _Staged:
        clock = time.perf_counter()
        texts = [c.text for c in request.chunks]
        tokens = self.scorer.tokenize(texts)
        original = self.count(request.options.separator.join(t.strip() for t in texts if t.strip()))
        target = original if request.rate is None and request.target_tokens is None else (
            int(request.rate * original) if request.rate is not None else min(request.target_tokens, original))
        duplicate_of = self._duplicates(request)
        unique = [i for i in range(len(texts)) if i not in duplicate_of]
        job = _Staged(request, texts, tokens, original, target, duplicate_of, unique, clock)
        job.timings["tokenize"] = time.perf_counter() - clock
        return job

    def _finish(self, job: _Staged, alive: Callable[[CompressRequest], bool]) -> CompressResult | None:
        request, texts, tokens, target = job.request, job.texts, job.tokens, job.target
        options = request.options
        sizes = [len(t.ids) for t in tokens]
        order = self._rank(request, tokens, job.unique)
        started = time.perf_counter()
        if request.method == "chunk" or target >= job.original:
            allotment = budget.whole_chunks(order, sizes, target)
        else:
            allotment = budget.allocate(order, sizes, target, self.tuning.density, self.tuning.steepness)
        partial = [i for i, n in allotment.items() if n < sizes[i]]
        try:
            self.scorer.fine([tokens[i] for i in partial], request.query, options.instruction,
                             stop=lambda: not alive(request))
        except Interrupted:
            return None
        job.timings["fine"] = time.perf_counter() - started

        started = time.perf_counter()
        units: dict[int, list[ScoredUnit]] = {}
        kept: dict[int, list[int]] = {}
        force = {t.strip() for t in options.force_tokens if t.strip()}
        granularity = "word" if request.method == "token" else "sentence"
        for index in partial:
            importance = token_importance(tokens[index], self.tuning.contrast)
            units[index] = units_of(texts[index], tokens[index], importance, granularity, force)
            kept[index] = choose(units[index], allotment[index])
        chosen = {i: (render(texts[i], units[i], kept[i]) if i in units else texts[i].strip())
                  for i in allotment}
        context_order = self._order(options.reorder, [i for i in order if i in allotment and chosen[i]])
        rank_of = {index: rank for rank, index in enumerate(order)}
        context = self._fit(context_order, rank_of, chosen, units, kept, texts, target, options.separator)
        job.timings["select"] = time.perf_counter() - started

        results = []
        for index, chunk in enumerate(request.chunks):
            dup = job.duplicate_of.get(index)
            kept_text = chosen.get(index, "") if index in context_order else ""
            results.append(ChunkResult(
                id=chunk.id, kept_text=kept_text, original_tokens=sizes[index], kept_tokens=self.count(kept_text),
                relevance=tokens[dup if dup is not None else index].relevance,
                rank=rank_of.get(dup if dup is not None else index, len(order)),
                duplicate_of=request.chunks[dup].id if dup is not None else None))
        prompt = self._prompt(context, request)
        job.timings["total"] = time.perf_counter() - job.started
        return CompressResult(prompt=prompt, chunks=results, original_tokens=job.original,
                              compressed_tokens=self.count(context), prompt_tokens=self.count(prompt),
                              target_tokens=target, method=request.method, timings=job.timings)

    @staticmethod
    def _duplicates(request: CompressRequest) -> dict[int, int]:
        """Chunk index -> index of its first identical (whitespace/case-insensitive) twin."""
        first: dict[str, int] = {}
        duplicates = {}
        for index, chunk in enumerate(request.chunks):
            key = _normal(chunk.text)
            if key in first:
                duplicates[index] = first[key]
            else:
                first[key] = index
        return duplicates

    @staticmethod
    def _rank(request: CompressRequest, tokens: list[ChunkTokens], unique: list[int]) -> list[int]:
        """Most relevant first: the engine's relevance; without a query, the retriever's score, then input order."""
        if request.query:
            return sorted(unique, key=lambda i: (-tokens[i].relevance, i))
        return sorted(unique, key=lambda i: (-(request.chunks[i].score or 0.0), i))

    @staticmethod
    def _order(reorder: str, kept_by_rank: list[int]) -> list[int]:
        if reorder == "relevance":
            return kept_by_rank
        if reorder == "edges":
            return _edges(kept_by_rank)
        return sorted(kept_by_rank)

    def _fit(self, order: list[int], rank_of: dict[int, int], chosen: dict[int, str],
             units: dict[int, list[ScoredUnit]],
             kept: dict[int, list[int]], texts: list[str], target: int, separator: str) -> str:
        """Join the chosen texts; while the real token count exceeds the target, drop the least
        important unit (or, when only whole chunks are left, the worst-ranked chunk)."""
        while True:
            context = separator.join(chosen[i] for i in order if chosen[i])
            if self.count(context) <= target or not order:
                return context
            droppable = [(units[i][u].importance, i, u) for i in order if i in units for u in kept[i]
                         if not units[i][u].forced]
            if droppable:
                _, index, unit = min(droppable)
                kept[index].remove(unit)
                chosen[index] = render(texts[index], units[index], kept[index])
            else:
                worst = max(order, key=rank_of.__getitem__)
                order.remove(worst)
                chosen[worst] = ""

    @staticmethod
    def _prompt(context: str, request: CompressRequest) -> str:
        parts = [request.options.instruction.strip(), context]
        if request.options.include_question and request.query:
            parts.append(f"Question: {request.query}")
        return "\n\n".join(p for p in parts if p)
