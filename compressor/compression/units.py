"""Inside one chunk: score units (words, sentences or code lines) and keep the best within an allotment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from compressor.compression.relevance import ChunkSentences, zscores
from compressor.compression.scoring import ChunkTokens
from compressor.text import segment


@dataclass
class ScoredUnit:
    span: segment.Span
    cost: int  # tokens of the chunk's own tokenisation that start inside the unit
    importance: float
    forced: bool


def token_importance(chunk: ChunkTokens, contrast: float) -> torch.Tensor:
    """Surprisal given the question, plus ``contrast`` x how much the question raised the token's probability."""
    with_question = chunk.logp_question if chunk.logp_question is not None else chunk.logp_plain
    if contrast == 0:
        return -with_question
    return -with_question + contrast * (with_question - chunk.logp_plain)


def units_of(text: str, chunk: ChunkTokens, importance: torch.Tensor, granularity: str,
             force: set[str]) -> list[ScoredUnit]:
    """Cut ``text`` into units and give each its token cost and importance.

    granularity: ``word`` (prose words, importance = max over tokens: one surprising token makes
    a word worth keeping) or ``sentence`` (sentences, or lines for code; importance = mean).
    Code is always cut in lines, and its signature lines are forced.
    """
    code = segment.looks_like_code(text)
    if code:
        spans = segment.lines(text)
    elif granularity == "word":
        spans = segment.words(text)
    else:
        spans = segment.sentences(text)
    units = []
    for span, (first, last) in zip(spans, _token_ranges(text, spans, chunk)):
        values = importance[first:last]
        if values.numel() == 0:
            score = float("-inf")
        elif granularity == "word" and not code:
            score = values.max().item()
        else:
            score = values.mean().item()
        body = span.text(text).strip()
        forced = body in force or (code and segment.is_signature(span.text(text)))
        units.append(ScoredUnit(span, last - first, score, forced))
    return units


def _token_ranges(text: str, spans: list[segment.Span], chunk: ChunkTokens) -> list[tuple[int, int]]:
    """For each span, the range of the chunk's tokens that start inside it (one linear pass)."""
    starts = [start for start, _ in chunk.offsets]
    ranges, token = [], 0
    for position in range(len(spans)):
        end = spans[position + 1].start if position + 1 < len(spans) else len(text) + 1
        first = token
        while token < len(starts) and starts[token] < end:
            token += 1
        ranges.append((first, token))
    return ranges


def sentence_units(text: str, chunk: ChunkTokens, sentences: ChunkSentences, similarity_z: list[float],
                   chunk_relevance: float, chunk_weight: float) -> list[ScoredUnit]:
    """A chunk's sentences (code: lines) scored for selection across chunks: the sentence's own
    z-scored similarity to the question plus ``chunk_weight`` x its chunk's relevance. A code
    signature scores just above the chunk's best line, so a function never loses its name while
    keeping any of its body."""
    scores = [z + chunk_weight * chunk_relevance for z in similarity_z]
    best = max(scores, default=0.0)
    code = segment.looks_like_code(text)
    units = []
    for span, score, (first, last) in zip(sentences.spans, scores, _token_ranges(text, sentences.spans, chunk)):
        if code and segment.is_signature(span.text(text)):
            score = max(score, best + 1e-6)
        units.append(ScoredUnit(span, last - first, score, False))
    return units


def score_sentences(texts: Sequence[str], tokens: Sequence[ChunkTokens], sentences: Mapping[int, ChunkSentences],
                    chunk_relevance: Mapping[int, float], chunk_weight: float) -> dict[int, list[ScoredUnit]]:
    """The units of every chunk in ``sentences`` (chunk index -> its scored sentences), scored for
    selection across those chunks: similarities are z-scored over all of them together."""
    flat = zscores([x for chunk in sentences.values() for x in chunk.similarity])
    units, position = {}, 0
    for index, chunk in sentences.items():
        count = len(chunk.similarity)
        units[index] = sentence_units(texts[index], tokens[index], chunk, flat[position : position + count],
                                      chunk_relevance[index], chunk_weight)
        position += count
    return units


def choose_sentences(units: dict[int, list[ScoredUnit]], allotment: int,
                     threshold: float | None = None) -> dict[int, list[int]]:
    """Across chunks: the best-scoring units that fit ``allotment`` (and, if given, score at least
    ``threshold``); chunk index -> its kept unit indices in text order."""
    ranked = sorted(((unit.importance, index, position) for index, chunk in units.items()
                     for position, unit in enumerate(chunk)), key=lambda item: (-item[0], item[1], item[2]))
    kept: dict[int, list[int]] = {}
    used = 0
    for importance, index, position in ranked:
        if threshold is not None and importance < threshold:
            break
        cost = units[index][position].cost
        if used + cost <= allotment:
            kept.setdefault(index, []).append(position)
            used += cost
    return {index: sorted(positions) for index, positions in kept.items()}


def choose(units: list[ScoredUnit], allotment: int) -> list[int]:
    """Indices of the units to keep: forced ones, then the most important that fit; in text order."""
    kept = [i for i, u in enumerate(units) if u.forced]
    used = sum(units[i].cost for i in kept)
    for index in sorted(range(len(units)), key=lambda i: -units[i].importance):
        unit = units[index]
        if unit.forced or used + unit.cost > allotment:
            continue
        kept.append(index)
        used += unit.cost
    return sorted(kept)


def render(text: str, units: list[ScoredUnit], kept: list[int]) -> str:
    """The kept units joined in order. Where a dropped unit separated two kept ones that would
    otherwise touch (``run `cmd``` losing the backtick), a space keeps them apart."""
    pieces: list[str] = []
    previous = None
    for index in kept:
        piece = units[index].span.text(text)
        if previous is not None and index != previous + 1 and pieces and not piece[:1].isspace() \
                and not pieces[-1][-1:].isspace():
            piece = " " + piece
        pieces.append(piece)
        previous = index
    return "".join(pieces).strip()
