"""Opening a data directory as an ``IndexStore`` from plain settings (faiss and the embedder load here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from compressor.retrieval.chunker import Chunking
from compressor.retrieval.store import IndexStore, Limits
from compressor.retrieval.vectors import IndexSpec


@dataclass(frozen=True)
class StoreConfig:
    data_dir: str | Path
    embedder: str = ""  # sentence-transformers directory; empty = the default embedder
    embedder_dim: int = 0  # truncate vectors to this size; 0 = the model's own
    embed_batch: int = 64
    spec: IndexSpec = field(default_factory=IndexSpec)
    chunking: Chunking = field(default_factory=Chunking)
    limits: Limits = field(default_factory=Limits)
    snapshot_every: int = 1000


def open_store(config: StoreConfig) -> IndexStore:
    from compressor.embedding import Embedder

    embedder = Embedder(config.embedder or None, config.embedder_dim, config.embed_batch)
    return IndexStore(config.data_dir, embedder, config.spec, config.chunking, config.limits, config.snapshot_every)
