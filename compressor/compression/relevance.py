"""How relevant each chunk and each sentence is to the question: the embedder's similarities,
fused with the language model's question likelihood where the model was asked.

The embedder (22M parameters) reads every sentence, and each chunk's opening as a whole (what the
chunk is about: a function's signature and first lines, a passage's topic); a chunk's embedder
score combines its best sentence, its sentences' mean and its opening. The language model only
reads the few chunks
the embedder ranks highest, which is where its judgement changes the outcome (the chunks near the
budget's edge), at a fraction of the cost of reading everything. All scores are z-scores within
one request, so that weights tuned on one set of questions carry to another.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from compressor.compression.scoring import ChunkTokens, question_suffix
from compressor.text import segment
from engine.api import StopCheck
from engine.errors import Interrupted

EMBED_SLICE = 256  # units per embedder call: a cancelled request stops within one slice
HEADER_TOKENS = 32  # the most tokens of a code chunk's header the model reads


class TextEmbedder(Protocol):
    def embed(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), dim)`` unit vectors (inner product = cosine similarity)."""


@dataclass
class ChunkSentences:
    """One chunk cut into the units sentence selection keeps or drops, with their similarity to the question."""

    spans: list[segment.Span]
    similarity: list[float]
    head: float  # similarity of the chunk's opening (its first characters, embedded as one text)

    @property
    def best(self) -> float:
        return max(self.similarity, default=-1.0)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.similarity) if self.similarity else -1.0


def units_of_text(text: str) -> list[segment.Span]:
    """Sentences for prose, lines for code."""
    return segment.lines(text) if segment.looks_like_code(text) else segment.sentences(text)


def embed_sentences(embedder: TextEmbedder, query: str, texts: Sequence[str], head_chars: int,
                    stop: StopCheck | None = None) -> list[ChunkSentences]:
    """Every chunk's units and opening (its first ``head_chars`` characters), and their cosine
    similarity to ``query``. ``stop`` is asked before each slice of ``EMBED_SLICE`` units; when it
    turns true, ``Interrupted`` is raised."""
    spans = [units_of_text(text) for text in texts]
    flat = [span.text(text).strip() for text, chunk in zip(texts, spans) for span in chunk]
    distinct = list(dict.fromkeys(flat))  # repeated lines (code's "else:", "return None") are embedded once
    question, heads = opening_similarity(embedder, query, texts, head_chars)
    found: list[float] = []
    for start in range(0, len(distinct), EMBED_SLICE):
        if stop is not None and stop():
            raise Interrupted("the request was abandoned while its sentences were embedded")
        found += (embedder.embed(distinct[start : start + EMBED_SLICE]) @ question).tolist()
    similarity_of = dict(zip(distinct, found))
    similarity = [similarity_of[unit] for unit in flat]
    out, position = [], 0
    for head, chunk in zip(heads, spans):
        out.append(ChunkSentences(chunk, similarity[position : position + len(chunk)], head))
        position += len(chunk)
    return out


def opening_similarity(embedder: TextEmbedder, query: str, texts: Sequence[str],
                       head_chars: int) -> tuple[np.ndarray, list[float]]:
    """The question's vector, and each chunk's first ``head_chars`` characters' similarity to it.
    The openings go in their own call: batched with short sentences they would pad them all to
    their length. The call costs in proportion to ``head_chars``."""
    first = embedder.embed([query, *(text[:head_chars] for text in texts)])
    return first[0], (first[1:] @ first[0]).tolist()


def embedder_scores(sentences: Mapping[int, ChunkSentences], mean_weight: float,
                    head_weight: float) -> dict[int, float]:
    """Each chunk's embedder score: z(best sentence) + ``mean_weight`` x z(mean of its sentences) +
    ``head_weight`` x z(its opening), z-scored across the chunks. The best sentence alone favours a
    chunk with one lucky line (a function whose comment echoes the question); the opening and the
    mean say what the whole chunk is about."""
    indices = list(sentences)
    scores = dict.fromkeys(indices, 0.0)
    for weight, values in ((1.0, [sentences[i].best for i in indices]),
                           (mean_weight, [sentences[i].mean for i in indices]),
                           (head_weight, [sentences[i].head for i in indices])):
        for index, z in zip(indices, zscores(values)):
            scores[index] += weight * z
    return scores


def by_embedder(scores: Mapping[int, float]) -> list[int]:
    """Chunk indices, the highest embedder score first (ties: input order)."""
    return sorted(scores, key=lambda i: (-scores[i], i))


def zscores(values: Sequence[float]) -> list[float]:
    """(v - mean) / standard deviation; all zeros when the values do not vary."""
    if len(values) < 2:
        return [0.0] * len(values)
    mean, spread = statistics.fmean(values), statistics.pstdev(values)
    return [(v - mean) / spread if spread > 0 else 0.0 for v in values]


def fuse(embedding: dict[int, float], signals: Sequence[tuple[Mapping[int, float], float]]) -> dict[int, float]:
    """Chunk scores: the z-scored embedder score of every chunk, plus, for each (signal, weight) of the
    language model, ``weight`` x the signal z-scored among the chunks it covers."""
    indices = list(embedding)
    fused = dict(zip(indices, zscores([embedding[i] for i in indices])))
    for signal, weight in signals:
        asked = [i for i in indices if i in signal]
        for index, z in zip(asked, zscores([signal[i] for i in asked])):
            fused[index] += weight * z
    return fused


def model_view(tokens: ChunkTokens, sentences: ChunkSentences, window: int) -> ChunkTokens:
    """What the language model reads of a chunk: all of it, or ``window`` tokens starting a quarter
    window before its best sentence (the sentence and what follows it, with a little lead-in)."""
    if not window or len(tokens.ids) <= window or not sentences.spans:
        return tokens
    span = sentences.spans[max(range(len(sentences.spans)), key=sentences.similarity.__getitem__)]
    first = next((t for t, (start, _) in enumerate(tokens.offsets) if start >= span.start), 0)
    low = max(0, min(first - window // 4, len(tokens.ids) - window))
    return ChunkTokens(tokens.ids[low : low + window], tokens.offsets[low : low + window])


def header_view(text: str, tokens: ChunkTokens, header: segment.Span, limit: int) -> ChunkTokens:
    """What the language model reads of a code chunk: its ``header`` (``segment.code_header``), at
    most its last ``limit`` tokens, so that the signature itself is never cut."""
    end = next((t for t, (start, _) in enumerate(tokens.offsets) if start >= header.end), len(tokens.ids))
    first = max(0, end - limit)
    return ChunkTokens(tokens.ids[first:end], tokens.offsets[first:end])


def documentation_suffix(header: str, query: str) -> str:
    """The question written as the documentation of the function the header opens: a docstring
    after a Python ``...:`` header, a comment inside a brace block otherwise. The model's
    likelihood of it is how well the question describes what the chunk defines: the direction a
    code model has learnt, and one a sentence embedder reading the body line by line misses."""
    last = header.rstrip().rsplit("\n", 1)[-1]
    indent = last[: len(last) - len(last.lstrip())] + "    "
    if header.rstrip().endswith(":"):
        return f'\n{indent}"""{query}"""'
    return f"\n{indent}// {query}"


def model_reads(order: Sequence[int], has_header: Callable[[int], bool], candidates: int,
                documented: int) -> tuple[list[int], list[int]]:
    """Which chunks the model reads, taking them in the embedder's ``order``: the first
    ``candidates`` prose chunks, and the first ``documented`` code chunks with a header (with
    ``documented`` 0, code chunks count as prose). Returns (prose, documented)."""
    headers = [i for i in order if has_header(i)][:documented] if documented else []
    prose = [i for i in order if not (documented and has_header(i))][:candidates]
    return prose, headers


def readings(query: str, order: Sequence[int], texts: Sequence[str], tokens: Sequence[ChunkTokens],
             sentences: Mapping[int, ChunkSentences], candidates: int, window: int,
             documented: int) -> tuple[dict[int, tuple[ChunkTokens, str]], set[int]]:
    """What the model reads (``model_reads``), chunk -> (view, suffix): a prose chunk as
    ``model_view`` and the question, a code chunk as its header and the question as its
    documentation. Also the set of the documented chunks."""
    spans = {i: segment.code_header(texts[i]) for i in order} if documented else {}
    prose, headers = model_reads(order, lambda i: spans.get(i) is not None, candidates, documented)
    chosen = {i: (model_view(tokens[i], sentences[i], window), question_suffix(query)) for i in prose}
    for i in headers:
        chosen[i] = (header_view(texts[i], tokens[i], spans[i], HEADER_TOKENS),
                     documentation_suffix(spans[i].text(texts[i]), query))
    return chosen, set(headers)
