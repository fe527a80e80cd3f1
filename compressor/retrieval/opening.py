"""Opening the retrieval backend from plain settings: a data directory as an ``IndexStore`` (faiss
loads here), or a Milvus as a ``MilvusStore``; the embedder loads here for both."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from compressor.retrieval.chunker import Chunking
from compressor.retrieval.contract import Limits
from compressor.retrieval.milvus import MilvusConfig, MilvusStore
from compressor.retrieval.store import IndexStore
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
    compact_ratio: float = 2.0
    milvus: MilvusConfig | None = None  # set: the index lives in this Milvus, and data_dir is unused


def open_store(config: StoreConfig) -> IndexStore | MilvusStore:
    from compressor.embedding import Embedder

    embedder = Embedder(config.embedder or None, config.embedder_dim, config.embed_batch)
    if config.milvus is not None:
        return MilvusStore(config.milvus, embedder, config.chunking, config.limits)
    return IndexStore(config.data_dir, embedder, config.spec, config.chunking, config.limits, config.snapshot_every,
                      compact_ratio=config.compact_ratio)
