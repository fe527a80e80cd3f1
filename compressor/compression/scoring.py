"""What the engine tells the compressor about each chunk, in two batched passes.

Pass 1 (the chunks the pipeline asks about): continuation ``view + suffix`` after the instruction
prefix, where the view is what the model reads of the chunk and the suffix states the question
(``question_suffix``: ``"\\n\\nQuestion: q"``; code headers get the question as their documentation,
see ``relevance.documentation_suffix``).
  - relevance: mean log-probability of the suffix tokens given the view (LongLLMLingua's
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

from compressor.compression.request import CompressionInputError
from engine import Engine
from engine.api import StopCheck

QUESTION_SUFFIX = "\n\nQuestion: {query}"
QUESTION_PREFIX = "Question: {query}\n\n"


def question_suffix(query: str) -> str:
    return QUESTION_SUFFIX.format(query=query)


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
            raise CompressionInputError(
                "query", f"the question and instruction take {self.engine.context_length - room} of the model's "
                         f"{self.engine.context_length} tokens and leave no room for context")
        return room

    def coarse(self, readings: list[tuple[ChunkTokens, str]], instruction: str, plain: bool,
               stop: StopCheck | None = None) -> None:
        """Pass 1 over (view, suffix) readings sharing one instruction, in one batched call: each
        view's relevance (the mean log-probability of its suffix; 0 for an empty suffix), and its
        suffix-free log-probabilities if ``plain`` (otherwise only the suffix tokens go through the
        vocabulary projection). Readings may come from different requests: batching them shares
        forward passes across requests."""
        prefix = self._prefix(instruction, None)
        encoded: dict[str, list[int]] = {}
        items = [(view, encoded.setdefault(suffix, self.engine.encode(suffix) if suffix else []))
                 for view, suffix in readings]
        longest_suffix = max((len(s) for _, s in items), default=0)
        room = self._room(prefix, [0] * longest_suffix)
        rows, owners = [], []
        for index, (view, suffix) in enumerate(items):
            for start, end in _windows(view.ids, room):
                rows.append(view.ids[start:end] + suffix)
                owners.append((index, end - start))
        tail = None if plain or not longest_suffix else longest_suffix
        scores = self.engine.score(prefix, rows, entropy=False, tail=tail, stop=stop)
        logp_plain: list[list[torch.Tensor]] = [[] for _ in items]
        best = [float("-inf")] * len(items)
        for (index, length), scored in zip(owners, scores):
            logp_plain[index].append(scored.logprobs[:length])
            if items[index][1]:
                best[index] = max(best[index], scored.logprobs[length:].mean().item())
        for index, (view, suffix) in enumerate(items):
            view.logp_plain = torch.cat(logp_plain[index]) if logp_plain[index] else torch.empty(0)
            view.relevance = best[index] if suffix else 0.0

    def plain(self, chunks: list[ChunkTokens], instruction: str, stop: StopCheck | None = None) -> None:
        """Question-free log-probabilities, for chunks whose coarse pass did not keep them."""
        missing = [c for c in chunks if c.logp_plain is None or torch.isnan(c.logp_plain).any()]
        if missing:
            self._conditioned(missing, self._prefix(instruction, None), "logp_plain", stop)

    def fine(self, chunks: list[ChunkTokens], query: str, instruction: str, stop: StopCheck | None = None) -> None:
        """Pass 2: log-probabilities given the question, for the chunks passed in."""
        if not query:
            self.plain(chunks, instruction, stop)
            for chunk in chunks:
                chunk.logp_question = chunk.logp_plain
            return
        self._conditioned(chunks, self._prefix(instruction, query), "logp_question", stop)

    def _conditioned(self, chunks: list[ChunkTokens], prefix: list[int], attribute: str,
                     stop: StopCheck | None) -> None:
        """Every token's log-probability after ``prefix`` (shared, computed once), set as ``attribute``."""
        room = self._room(prefix, [])
        rows, owners = [], []
        for index, chunk in enumerate(chunks):
            for start, end in _windows(chunk.ids, room):
                rows.append(chunk.ids[start:end])
                owners.append(index)
        scores = self.engine.score(prefix, rows, entropy=False, stop=stop)
        parts: list[list[torch.Tensor]] = [[] for _ in chunks]
        for index, scored in zip(owners, scores):
            parts[index].append(scored.logprobs)
        for index, chunk in enumerate(chunks):
            setattr(chunk, attribute, torch.cat(parts[index]) if parts[index] else torch.empty(0))
