"""The sentence embedder (all-MiniLM-L6-v2 by default) shared by compression, which ranks chunks
and sentences with it, and retrieval, which indexes documents with it.

``Embedder`` is imported lazily so that importing this package costs nothing until a model loads.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compressor.embedding.embedder import DEFAULT_NAME, Embedder, default_embedder_path

__all__ = ["DEFAULT_NAME", "Embedder", "default_embedder", "default_embedder_path"]


@functools.cache
def default_embedder() -> Embedder:
    """The default embedder, loaded once per process (compressors share it: inference keeps no state)."""
    from compressor.embedding.embedder import Embedder

    return Embedder()


def __getattr__(name: str):
    if name in ("DEFAULT_NAME", "Embedder", "default_embedder_path"):
        from compressor.embedding import embedder

        return getattr(embedder, name)
    raise AttributeError(name)
