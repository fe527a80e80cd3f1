"""Query-aware compression of retrieved chunks on the engine (see ``pipeline``).

The request and result types import without torch; ``Compressor`` and ``Tuning`` load the
pipeline (and with it the engine) when first named, so command-line clients stay light.
"""

from typing import Any

from compressor.compression.request import (
    METHODS,
    REORDERS,
    Chunk,
    ChunkResult,
    CompressionInputError,
    CompressOptions,
    CompressRequest,
    CompressResult,
)

__all__ = [
    "METHODS",
    "REORDERS",
    "Chunk",
    "ChunkResult",
    "CompressOptions",
    "CompressRequest",
    "CompressResult",
    "CompressionInputError",
    "Compressor",
    "Tuning",
]


def __getattr__(name: str) -> Any:
    if name in ("Compressor", "Tuning"):
        from compressor.compression import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
