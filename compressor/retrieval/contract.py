"""What every retrieval backend accepts and returns (the embedded FAISS store, Milvus): documents,
hits, limits, and the checks of a request, so that both refuse the same input with the same
sentence. Importable without faiss or pymilvus."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from compressor.retrieval.chunker import Chunking, chunk_text
from compressor.retrieval.errors import EmbedderMismatch, IndexInputError

if TYPE_CHECKING:
    from compressor.embedding import Embedder

NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DEFAULT_NAMESPACE = "default"


@dataclass
class Document:
    id: str
    text: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Hit:
    document_id: str
    chunk: int  # ordinal of the chunk within its document
    text: str
    score: float  # cosine similarity
    metadata: dict[str, str]

    @property
    def id(self) -> str:
        return f"{self.document_id}#{self.chunk}"


@dataclass(frozen=True)
class Limits:
    max_documents: int = 1000  # per Upsert
    max_document_chars: int = 1_000_000
    max_top_k: int = 1000


def checked_namespace(name: str) -> str:
    """``name``, or the default namespace for an empty one; a malformed name is refused."""
    name = name or DEFAULT_NAMESPACE
    if not NAMESPACE.fullmatch(name):
        raise IndexInputError("namespace", f"{name!r} is not a valid name (1-64 letters, digits, '_', '.', '-', "
                                           "starting with a letter or digit)")
    return name


def chunked_documents(documents: list[Document], limits: Limits, chunking: Chunking) -> list[list[str]]:
    """Every document's chunks, after checking the request: at least one document, within the
    limits, non-empty ids unique within the request, non-empty texts."""
    if not documents:
        raise IndexInputError("documents", "at least one document is required")
    if len(documents) > limits.max_documents:
        raise IndexInputError("documents", f"{len(documents)} documents exceed the limit of "
                                           f"{limits.max_documents} per request")
    seen: set[str] = set()
    chunked: list[list[str]] = []
    for index, doc in enumerate(documents):
        if not doc.id:
            raise IndexInputError(f"documents[{index}].id", "is empty")
        if doc.id in seen:
            raise IndexInputError(f"documents[{index}].id", f"duplicate document id {doc.id!r} in one request")
        seen.add(doc.id)
        if not doc.text.strip():
            raise IndexInputError(f"documents[{index}].text", "is empty")
        if len(doc.text) > limits.max_document_chars:
            raise IndexInputError(f"documents[{index}].text", f"{len(doc.text)} characters exceed the limit of "
                                                              f"{limits.max_document_chars}")
        chunked.append(chunk_text(doc.text, chunking))
    return chunked


def check_search(query: str, top_k: int, limits: Limits) -> None:
    if not query.strip():
        raise IndexInputError("query", "is empty")
    if not 1 <= top_k <= limits.max_top_k:
        raise IndexInputError("top_k", f"must be in 1..{limits.max_top_k}, got {top_k}")


def check_ids(ids: list[str]) -> None:
    if not ids:
        raise IndexInputError("ids", "at least one document id is required")


def require_embedder(embedder: Embedder | None) -> Embedder:
    """The store's embedder; a store opened without one (a repair) takes no writes or searches."""
    if embedder is None:
        raise EmbedderMismatch("this index was opened without an embedder")
    return embedder


def check_embedder(namespace: str, indexed_with: str, indexed_dim: int, embedder: Embedder | None) -> None:
    """A namespace's vectors can only be compared with vectors of the embedder that made them."""
    embedder = require_embedder(embedder)
    if indexed_dim != embedder.dim or indexed_with != embedder.name:
        raise EmbedderMismatch(
            f"namespace {namespace!r} was indexed with {indexed_with} ({indexed_dim}-dim vectors); "
            f"this server embeds with {embedder.name} ({embedder.dim}-dim): its vectors cannot be "
            "compared. Re-index the documents into a new namespace or data directory, or configure the "
            "original embedder")
