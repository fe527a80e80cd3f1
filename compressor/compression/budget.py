"""The budget controller: how many tokens each chunk may keep, by rank.

Chunks are admitted in rank order until their total reaches ``target / density`` (so that on
average an admitted chunk keeps about ``density`` of its tokens). The admitted chunk at rank r
keeps the fraction ``min(1, s / (1 + r) ** steepness)`` of its tokens, with ``s`` chosen so that
the allotments sum to the target: the best-ranked chunks stay whole or nearly so, the later ones
give up more (LongLLMLingua's dynamic compression ratio, with a steeper fall-off).
"""

from __future__ import annotations


def whole_chunks(order: list[int], sizes: list[int], target: int) -> dict[int, int]:
    """Keep whole chunks in rank order while they fit (a chunk too big is skipped, not cut)."""
    kept, used = {}, 0
    for index in order:
        if used + sizes[index] <= target:
            kept[index] = sizes[index]
            used += sizes[index]
    return kept


def allocate(order: list[int], sizes: list[int], target: int, density: float, steepness: float) -> dict[int, int]:
    """Token allotment per chunk index (only admitted chunks appear); allotments sum to ``target``."""
    if sum(sizes[i] for i in order) <= target:
        return {i: sizes[i] for i in order}
    admitted, total = [], 0
    for index in order:
        if sizes[index] == 0:
            continue
        admitted.append(index)
        total += sizes[index]
        if total >= target / density:
            break
    weights = {index: 1.0 / (1 + rank) ** steepness for rank, index in enumerate(admitted)}

    def share(scale: float) -> dict[int, int]:
        return {i: min(sizes[i], int(scale * sizes[i] * weights[i])) for i in admitted}

    low, high = 0.0, 1.0 / min(weights.values())
    for _ in range(40):
        middle = (low + high) / 2
        if sum(share(middle).values()) <= target:
            low = middle
        else:
            high = middle
    return {i: n for i, n in share(low).items() if n > 0}
