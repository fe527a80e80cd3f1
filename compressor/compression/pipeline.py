"""Query-aware compression of retrieved chunks: ranking, a budget, selection.

Ranking (with a question): the embedder scores every sentence (code: line) against the question;
a chunk's embedder score is its best sentence's. The language model then reads two kinds of
chunk (one batched pass): of the prose chunks, only the ``Tuning.candidates`` the embedder ranks
highest, scoring how likely it finds the question after each (LongLLMLingua's coarse signal);
of the code chunks, every one that defines a function or class (up to ``Tuning.documented``),
scoring how likely the question is as that definition's documentation after its header. A
chunk's relevance is the fusion of the embedder's score and the model's
(``compressor.compression.relevance``). Without a question, chunks keep the retriever's order.

Methods:
- ``sentence`` (the default): keep the sentences (code: lines) with the best score, which is
  the sentence's own similarity to the question plus its chunk's relevance, so that a relevant
  chunk keeps its answer sentence and loses its filler; a kept code line brings its function's
  signature. The output reads as prose.
- ``token``: give the best-ranked chunks an allotment by rank and keep each one's most
  informative words (the model's surprisal given the question); code keeps whole lines and
  signatures. Denser, but it reads as word salad, and costs a second model pass.
- ``chunk``: keep whole chunks in order of relevance while they fit; no edits inside a chunk.
- ``digest``: the model writes a summary of the ``sentence`` method's selection at a few times
  the budget, within the budget (``compressor.compression.digest``); the chunks keep no text of
  their own, the result's ``digest`` lists the sentences and the chunks each came from.

The adaptive budget (``CompressRequest.adaptive``) sets no rate: the ``sentence`` score decides,
keeping every sentence above ``Tuning.adaptive_threshold`` (Provence-style), up to an optional
ceiling in tokens.

The budget bounds the tokens of the kept context (the instruction and question are added around
it and reported separately). It is honoured exactly: after assembly the context is counted with
the engine's tokenizer and the least important units are dropped until it fits.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from compressor.compression import budget, relevance
from compressor.compression.digest import DigestLimits, write_digest
from compressor.compression.relevance import ChunkSentences, TextEmbedder
from compressor.compression.request import ChunkResult, CompressionInputError, CompressRequest, CompressResult
from compressor.compression.scoring import ChunkTokens, SignalScorer
from compressor.compression.units import (
    ScoredUnit,
    choose,
    choose_sentences,
    render,
    score_sentences,
    token_importance,
    units_of,
)
from compressor.embedding import default_embedder
from engine import Engine, Interrupted

DIGEST_PROMPT_TOKENS = 256  # the digest's instruction, chat template and evidence numbering, at most


@dataclass(frozen=True)
class Tuning:
    """Knobs of the ranking and the methods, tuned on questions 1-50 of the NQ and code dev sets
    (``python -m bench.tune``; ``bench.quality`` reports questions 51-100)."""

    mean_weight: float = 0.0  # chunk's embedder score: z(best sentence) + this x z(mean of its sentences)
    head_weight: float = 2.0  # ... + this x z(similarity of its opening, embedded whole)
    head_chars: int = 192  # a chunk's opening: its first characters (the embedder's cost grows with it)
    candidates: int = 2  # prose chunks the language model reads (the embedder's best)
    window: int = 32  # tokens of a candidate the model reads, around its best sentence (0 = the whole chunk)
    likelihood_weight: float = 1.0  # the model's z-scored question likelihood, against the embedder's z-score
    documentation_weight: float = 1.5  # the model's z-scored likelihood of the question as a code header's docs
    documented: int = 16  # code chunks whose header the model reads (the embedder's best): bounds the pass
    chunk_weight: float = 0.5  # sentence score = own similarity z-score + this x its chunk's relevance
    adaptive_threshold: float = 1.0  # adaptive budget: keep the sentences whose score reaches this
    density: float = 0.7  # token method: average fraction of its tokens an admitted chunk keeps
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
    target: int  # in the counted tokens (the request's budget tokenizer, or the model's)
    selection: int  # the target in the model's tokens, what selection counts units in
    count: Callable[[str], int]  # tokens of a text, in the budget's tokenizer
    duplicate_of: dict[int, int]
    unique: list[int]
    started: float
    timings: dict[str, float] = field(default_factory=dict)
    sentences: dict[int, ChunkSentences] = field(default_factory=dict)  # unique chunk -> its scored units
    embedding: dict[int, float] = field(default_factory=dict)  # unique chunk -> its embedder score
    readings: dict[int, tuple[ChunkTokens, str]] = field(default_factory=dict)  # chunk -> (view, suffix)
    documented: set[int] = field(default_factory=set)  # the readings that are code headers
    scores: dict[int, float] = field(default_factory=dict)  # unique chunk -> relevance (higher = better)


class Compressor:
    def __init__(self, engine: Engine, embedder: TextEmbedder | None = None, tuning: Tuning | None = None,
                 digest_limits: DigestLimits | None = None,
                 tokenizers: Mapping[str, Callable[[str], int]] | None = None) -> None:
        """``embedder``: the sentence embedder (default: all-MiniLM-L6-v2, loaded once per process).
        ``tokenizers``: token counters a request may name for its budget and usage (a downstream
        model's tokenizer), by name."""
        self.engine = engine
        self.tokenizers = dict(tokenizers or {})
        self.embedder = embedder if embedder is not None else default_embedder()
        self.scorer = SignalScorer(engine)
        self.tuning = tuning or Tuning()
        self.digest_limits = digest_limits or DigestLimits()

    def count(self, text: str) -> int:
        return len(self.engine.encode(text)) if text else 0

    def _counter(self, name: str) -> Callable[[str], int]:
        if not name:
            return self.count
        if name not in self.tokenizers:
            known = ", ".join(sorted(self.tokenizers)) or "none (see the tokenizers setting)"
            raise CompressionInputError("budget_tokenizer", f"unknown tokenizer {name!r}; this server has: {known}")
        return self.tokenizers[name]

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
            try:
                self._embed(job, stop=lambda job=job: not alive(job.request))
            except Interrupted:
                continue
            by_instruction.setdefault(job.request.options.instruction, []).append(job)
        ranked: set[int] = set()
        for instruction, group in by_instruction.items():
            started = time.perf_counter()
            try:
                readings = [reading for job in group for reading in job.readings.values()]
                if readings:
                    self.scorer.coarse(readings, instruction, plain=self.tuning.contrast != 0,
                                       stop=lambda group=group: not any(alive(job.request) for job in group))
            except Interrupted:
                continue  # every request of the group was abandoned
            for job in group:
                job.timings["rank"] = time.perf_counter() - started
                job.scores = self._relevance(job)
                ranked.add(id(job))
        return [self._finish(job, alive) if id(job) in ranked and alive(job.request) else None for job in jobs]

    def _embed(self, job: _Staged, stop: Callable[[], bool]) -> None:
        """With a question: every unique chunk's units and their similarity to it, and the chunks
        the model will read. Without one there is nothing to rank by: the retriever's order ranks
        the chunks, and only those the budget cuts are read (by the fine pass)."""
        if stop():
            raise Interrupted("the request was abandoned before it was ranked")
        if not job.request.query:
            return
        started = time.perf_counter()
        scored = relevance.embed_sentences(self.embedder, job.request.query, [job.texts[i] for i in job.unique],
                                           self.tuning.head_chars, stop)
        job.sentences = dict(zip(job.unique, scored))
        job.embedding = relevance.embedder_scores(job.sentences, self.tuning.mean_weight, self.tuning.head_weight)
        tuning = self.tuning
        job.readings, job.documented = relevance.readings(
            job.request.query, relevance.by_embedder(job.embedding), job.texts, job.tokens, job.sentences,
            tuning.candidates, tuning.window, tuning.documented if tuning.documentation_weight else 0)
        job.timings["embed"] = time.perf_counter() - started

    def _relevance(self, job: _Staged) -> dict[int, float]:
        if not job.request.query:
            return {i: job.request.chunks[i].score or 0.0 for i in job.unique}
        likelihood = {i: view.relevance for i, (view, _) in job.readings.items() if i not in job.documented}
        documentation = {i: job.readings[i][0].relevance for i in job.documented}
        return relevance.fuse(job.embedding, [(likelihood, self.tuning.likelihood_weight),
                                              (documentation, self.tuning.documentation_weight)])

    def _prepare(self, request: CompressRequest) -> _Staged:
        clock = time.perf_counter()
        texts = [c.text for c in request.chunks]
        tokens = self.scorer.tokenize(texts)
        count = self._counter(request.budget_tokenizer)
        joined = request.options.separator.join(t.strip() for t in texts if t.strip())
        original = count(joined)
        if request.rate is not None:
            target = int(request.rate * original)
        else:  # an absolute budget, the adaptive budget's ceiling, or none (keep everything)
            target = min(request.target_tokens or original, original)
        # Selection counts units in the model's tokens: the budget converted at this context's exchange
        # rate; the final trim (``_fit``) then counts in the budget's own tokens, exactly.
        selection = target if count is self.count else int(target * self.count(joined) / max(original, 1))
        duplicate_of = self._duplicates(request)
        unique = [i for i in range(len(texts)) if i not in duplicate_of]
        job = _Staged(request, texts, tokens, original, target, selection, count, duplicate_of, unique, clock)
        job.timings["tokenize"] = time.perf_counter() - clock
        return job

    def _finish(self, job: _Staged, alive: Callable[[CompressRequest], bool]) -> CompressResult | None:
        request, texts, tokens, target = job.request, job.texts, job.tokens, job.target
        options = request.options
        order = sorted(job.unique, key=lambda i: (-job.scores[i], i))
        if request.method == "digest":
            return self._digest(job, order, alive)
        sizes = [len(t.ids) for t in tokens]
        units: dict[int, list[ScoredUnit]] = {}
        kept: dict[int, list[int]] = {}
        started = time.perf_counter()
        if request.method == "chunk" or (target >= job.original and not request.adaptive):
            allotment = (self._adaptive_chunks(job, order) if request.adaptive
                         else budget.whole_chunks(order, sizes, job.selection))
            chosen = {i: texts[i].strip() for i in allotment}
        elif request.method == "sentence" and request.query:
            threshold = self.tuning.adaptive_threshold if request.adaptive else None
            units = self._sentence_units(job)
            kept = choose_sentences(units, job.selection, threshold)
            units = {i: units[i] for i in kept}
            chosen = {i: render(texts[i], units[i], kept[i]) for i in kept}
        else:
            chosen = self._within_chunks(job, order, sizes, units, kept, alive)
            if chosen is None:
                return None
        context_order = self._order(options.reorder, [i for i in order if chosen.get(i)])
        rank_of = {index: rank for rank, index in enumerate(order)}
        context = self._fit(context_order, rank_of, chosen, units, kept, texts, target, options.separator, job.count)
        job.timings["select"] = time.perf_counter() - started
        kept_texts = {i: chosen.get(i, "") for i in context_order}
        return self._result(job, order, kept_texts, context)

    def _result(self, job: _Staged, order: list[int], kept_texts: dict[int, str], context: str,
                **digest: object) -> CompressResult:
        """The result of ``job`` whose chunks kept ``kept_texts`` (unique chunk -> text) and whose
        context is ``context``."""
        request = job.request
        rank_of = {index: rank for rank, index in enumerate(order)}
        results = []
        for index, chunk in enumerate(request.chunks):
            dup = job.duplicate_of.get(index)
            owner = dup if dup is not None else index
            kept_text = kept_texts.get(index, "")
            original = len(job.tokens[index].ids) if job.count is self.count else job.count(job.texts[index])
            results.append(ChunkResult(
                id=chunk.id, kept_text=kept_text, original_tokens=original, kept_tokens=job.count(kept_text),
                relevance=job.scores[owner], rank=rank_of.get(owner, len(order)),
                duplicate_of=request.chunks[dup].id if dup is not None else None))
        prompt = self._prompt(context, request)
        job.timings["total"] = time.perf_counter() - job.started
        return CompressResult(prompt=prompt, chunks=results, original_tokens=job.original,
                              compressed_tokens=job.count(context), prompt_tokens=job.count(prompt),
                              target_tokens=job.target, method=request.method, timings=job.timings,
                              tokenizer=request.budget_tokenizer or "model", **digest)

    def _digest(self, job: _Staged, order: list[int],
                alive: Callable[[CompressRequest], bool]) -> CompressResult | None:
        """The digest method: evidence by sentence selection at ``evidence_factor`` x the budget (no
        more than the model's context leaves beside the instruction and the digest), then the model's
        summary of it. None when the request was abandoned during the decode."""
        request, limits = job.request, self.digest_limits
        started = time.perf_counter()
        room = self.engine.context_length - limits.max_tokens - self.count(request.query) - DIGEST_PROMPT_TOKENS
        model_original = sum(len(t.ids) for t in job.tokens)
        evidence_budget = max(1, min(model_original, int(limits.evidence_factor * job.selection), room))
        units = self._sentence_units(job)
        kept = choose_sentences(units, evidence_budget, None)
        evidence = [(request.chunks[i].id or str(i), render(job.texts[i], units[i], kept[i])) for i in sorted(kept)]
        job.timings["select"] = time.perf_counter() - started
        evidence = [(i, text) for i, text in evidence if text]
        if not evidence or job.target < 1:  # nothing to summarise, or no room for a word of it
            return self._result(job, order, {}, "", digest_finish="empty")
        started = time.perf_counter()
        try:
            digest = write_digest(self.engine, request.query, evidence, job.target, limits, job.count,
                                  job.selection, interrupt=lambda: not alive(request))
        except Interrupted:
            return None
        job.timings["digest"] = time.perf_counter() - started
        return self._result(job, order, {}, digest.text, digest=digest.sentences, digest_finish=digest.finish_reason)

    def _sentence_units(self, job: _Staged) -> dict[int, list[ScoredUnit]]:
        return score_sentences(job.texts, job.tokens, job.sentences, job.scores, self.tuning.chunk_weight)

    def _adaptive_chunks(self, job: _Staged, order: list[int]) -> dict[int, int]:
        """Adaptive budget, whole chunks: those holding a sentence that reaches the threshold, best
        first, while they fit the ceiling."""
        units = self._sentence_units(job)
        relevant = [i for i in order if units[i] and max(u.importance for u in units[i])
                    >= self.tuning.adaptive_threshold]
        return budget.whole_chunks(relevant, [len(t.ids) for t in job.tokens], job.selection)

    def _within_chunks(self, job: _Staged, order: list[int], sizes: list[int], units: dict[int, list[ScoredUnit]],
                       kept: dict[int, list[int]], alive: Callable[[CompressRequest], bool]) -> dict[int, str] | None:
        """The token method (and sentence selection without a question): allotments by rank, then
        each cut chunk keeps its most informative units by the model's fine pass. Fills ``units``
        and ``kept``; None when the request was abandoned during the pass."""
        request, texts, tokens = job.request, job.texts, job.tokens
        if job.target >= job.original:
            allotment = budget.whole_chunks(order, sizes, job.selection)
        else:
            allotment = budget.allocate(order, sizes, job.selection, self.tuning.density, self.tuning.steepness)
        partial = [i for i, n in allotment.items() if n < sizes[i]]
        started = time.perf_counter()
        try:
            if self.tuning.contrast:
                self.scorer.plain([tokens[i] for i in partial], request.options.instruction,
                                  stop=lambda: not alive(request))
            self.scorer.fine([tokens[i] for i in partial], request.query, request.options.instruction,
                             stop=lambda: not alive(request))
        except Interrupted:
            return None
        job.timings["fine"] = time.perf_counter() - started
        force = {t.strip() for t in request.options.force_tokens if t.strip()}
        granularity = "word" if request.method == "token" else "sentence"
        for index in partial:
            importance = token_importance(tokens[index], self.tuning.contrast)
            units[index] = units_of(texts[index], tokens[index], importance, granularity, force)
            kept[index] = choose(units[index], allotment[index])
        return {i: (render(texts[i], units[i], kept[i]) if i in units else texts[i].strip()) for i in allotment}

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
    def _order(reorder: str, kept_by_rank: list[int]) -> list[int]:
        if reorder == "relevance":
            return kept_by_rank
        if reorder == "edges":
            return _edges(kept_by_rank)
        return sorted(kept_by_rank)

    def _fit(self, order: list[int], rank_of: dict[int, int], chosen: dict[int, str],
             units: dict[int, list[ScoredUnit]],
             kept: dict[int, list[int]], texts: list[str], target: int, separator: str,
             count: Callable[[str], int]) -> str:
        """Join the chosen texts; while the real token count exceeds the target, drop the least
        important unit (or, when only whole chunks are left, the worst-ranked chunk)."""
        while True:
            context = separator.join(chosen[i] for i in order if chosen[i])
            if count(context) <= target or not order:
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
