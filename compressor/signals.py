"""What the engine tells the compressor about each chunk, in two batched passes.

Pass 1 (every chunk): continuation ``chunk + "\\n\\nQuestion: q"`` after the instruction prefix.
  - relevance: mean log-probability of the question tokens given the chunk (LongLLMLingua's
    coarse signal: a chunk that explains the question makes it likely);
  - ``logp_plain``, only when the contrastive score needs it: each chunk token's log-probability
    without the question.
Pass 2 (only chunks that survive the coarse cut): continuation ``chunk`` after the prefix
``instruction + "Question: q\\n\\n"``, computed once and shared by every row (KV reuse):
  - ``logp_question``: each chunk token's log-probability given the question.

A chunk longer than the model's context is scored in windows that each fit it; its relevance is
the best window's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine import Engine

QUESTION_SUFFIX = "\n\nQuestion: {query}"
QUESTION_PREFIX = "Question: {query}\n\n"


@dataclass
class ChunkTokens:
    ids: list[int]
    offsets: list[tuple[int, int]]
    logp_plain: torch.Tensor | None = None
    logp_question: torch.Tensor | None = None
    relevance: float = 0.0


def _windows(ids: list[int], room: int) -> list[tuple[int, int]]:
    return [(start, min(start + room, len(ids))) for start in range(0, max(len(ids), 1), room)]


class SignalScorer:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def tokenize(self, texts: list[str]) -> list[ChunkTokens]:
        return [ChunkTokens(*self.engine.tokenizer.encode_with_offsets(text)) for text in texts]

    def _prefix(self, instruction: str, query: str | None) -> list[int]:
        text = instruction + ("\n\n" if instruction else "")
        if query:
            text += QUESTION_PREFIX.format(query=query)
        return self.engine.encode(text) if text else []

    def _room(self, prefix: list[int], suffix: list[int]) -> int:
        room = self.engine.context_length - max(len(prefix), 1) - len(suffix)
        if room < 16:
            raise ValueError("the question and instruction leave no room for context in the model's window")
        return room

    def coarse(self, chunks: list[ChunkTokens], query: str, instruction: str, plain: bool) -> None:
        """Pass 1: relevance for every chunk, and its question-free log-probabilities if ``plain``
        (otherwise only the question tokens go through the vocabulary projection)."""
        prefix = self._prefix(instruction, None)
        question = self.engine.encode(QUESTION_SUFFIX.format(query=query)) if query else []
        room = self._room(prefix, question)
        rows, owners = [], []
        for index, chunk in enumerate(chunks):
            for start, end in _windows(chunk.ids, room):
                rows.append(chunk.ids[start:end] + question)
                owners.append((index, end - start))
        tail = None if plain or not question else len(question)
        scores = self.engine.score(prefix, rows, entropy=False, tail=tail)
        logp_plain: list[list[torch.Tensor]] = [[] for _ in chunks]
        best = [float("-inf")] * len(chunks)
        for (index, length), scored in zip(owners, scores):
            logp_plain[index].append(scored.logprobs[:length])
            if question:
                best[index] = max(best[index], scored.logprobs[length:].mean().item())
        for index, chunk in enumerate(chunks):
            chunk.logp_plain = torch.cat(logp_plain[index]) if logp_plain[index] else torch.empty(0)
            chunk.relevance = best[index] if question else 0.0

    def plain(self, chunks: list[ChunkTokens], instruction: str) -> None:
        """Question-free log-probabilities, for chunks whose coarse pass did not keep them."""
        missing = [c for c in chunks if c.logp_plain is None or torch.isnan(c.logp_plain).any()]
        if missing:
            self._conditioned(missing, self._prefix(instruction, None), "logp_plain")

    def fine(self, chunks: list[ChunkTokens], query: str, instruction: str) -> None:
        """Pass 2: log-probabilities given the question, for the chunks passed in."""
        if not query:
            self.plain(chunks, instruction)
            for chunk in chunks:
                chunk.logp_question = chunk.logp_plain
            return
        prefix = self._prefix(instruction, query)
        room = self._room(prefix, [])
        rows, owners = [], []
        for index, chunk in enumerate(chunks):
            for start, end in _windows(chunk.ids, room):
                rows.append(chunk.ids[start:end])
                owners.append(index)
        scores = self.engine.score(prefix, rows, entropy=False)
        parts: list[list[torch.Tensor]] = [[] for _ in chunks]
        for index, scored in zip(owners, scores):
            parts[index].append(scored.logprobs)
        for index, chunk in enumerate(chunks):
            chunk.logp_question = torch.cat(parts[index]) if parts[index] else torch.empty(0)
