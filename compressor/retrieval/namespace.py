"""One namespace of the embedded store in memory: its documents, chunk texts, metadata postings and vectors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compressor.retrieval.vectors import VectorIndex


@dataclass(frozen=True)
class Entry:
    """A stored document. Never changed in place (a replacement is a new entry), so a shallow copy of
    ``Namespace.documents`` is a consistent picture for a snapshot written while writes go on."""

    metadata: dict[str, str]
    chunk_ids: list[int]
    texts: tuple[str, ...]


class Namespace:
    def __init__(self, name: str, dim: int, embedder: str, vectors: VectorIndex) -> None:
        self.name = name
        self.dim = dim
        self.embedder = embedder
        self.vectors = vectors
        self.documents: dict[str, Entry] = {}
        self.chunks: dict[int, tuple[str, int, str]] = {}  # id -> (document id, ordinal, text)
        self.postings: dict[tuple[str, str], set[int]] = {}  # metadata (key, value) -> chunk ids

    def put(self, doc_id: str, metadata: dict[str, str], ids: list[int], texts: list[str]) -> None:
        self.documents[doc_id] = Entry(metadata, ids, tuple(texts))
        for ordinal, (chunk_id, text) in enumerate(zip(ids, texts)):
            self.chunks[chunk_id] = (doc_id, ordinal, text)
        for pair in metadata.items():
            self.postings.setdefault(pair, set()).update(ids)

    def drop(self, doc_id: str) -> list[int]:
        entry = self.documents.pop(doc_id, None)
        if entry is None:
            return []
        for chunk_id in entry.chunk_ids:
            del self.chunks[chunk_id]
        for pair in entry.metadata.items():
            self.postings[pair].difference_update(entry.chunk_ids)
            if not self.postings[pair]:
                del self.postings[pair]
        return entry.chunk_ids

    def allowed(self, where: dict[str, str]) -> np.ndarray:
        """Chunk ids whose document metadata has every ``key=value`` of ``where``."""
        sets = sorted((self.postings.get(pair, set()) for pair in where.items()), key=len)
        ids = set.intersection(*sets) if sets else set()
        return np.fromiter(ids, dtype=np.int64, count=len(ids))
