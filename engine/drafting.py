"""Drafters for speculative decoding: cheap guesses of the next tokens, which the model verifies.

``PromptLookup`` needs no second model: when the last few tokens also occur earlier in the prompt
or the text so far, it proposes the tokens that followed that occurrence. Text that copies from
its prompt (a digest quoting its evidence, code repeating an identifier) is predicted well.
"""

from __future__ import annotations

from typing import Protocol


class Drafter(Protocol):
    def start(self, ids: list[int]) -> None:
        """A new sequence begins with ``ids`` (the prompt)."""

    def extend(self, ids: list[int]) -> None:
        """Tokens accepted into the sequence, in order."""

    def propose(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that may come next (none when there is no guess)."""


class PromptLookup:
    """Proposes what followed the most recent earlier occurrence of the sequence's last n tokens,
    trying the longest n first (``max_ngram`` down to ``min_ngram``).

    An index from every n-gram to the position after its latest occurrence is kept up to date as
    tokens arrive, so each token costs ``max_ngram - min_ngram + 1`` dictionary updates and a
    proposal costs as many look-ups: nothing rescans the sequence.
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"n-gram lengths must satisfy 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.lengths = range(max_ngram, min_ngram - 1, -1)
        self.tokens: list[int] = []
        self.follows: dict[int, dict[tuple[int, ...], int]] = {}

    def start(self, ids: list[int]) -> None:
        self.tokens = []
        self.follows = {n: {} for n in self.lengths}
        self.extend(ids)

    def extend(self, ids: list[int]) -> None:
        for token in ids:
            # The n-grams that end just before this token now have a follower: it.
            position = len(self.tokens)
            for n in self.lengths:
                if position >= n:
                    self.follows[n][tuple(self.tokens[position - n : position])] = position
            self.tokens.append(token)

    def propose(self, limit: int) -> list[int]:
        if limit <= 0:
            return []
        for n in self.lengths:
            if len(self.tokens) < n:
                continue
            start = self.follows[n].get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start : start + limit]
        return []
