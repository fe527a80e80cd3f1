"""Retrieval in Milvus: the embedded store's contract, with the index held by a Milvus deployment
(a cluster, a standalone server, or Milvus Lite), so any number of Focal replicas share one index
and hold no index state themselves.

One collection per namespace, named ``focal_<namespace, '.' and '-' as '_'>_<8 hex of its hash>``
(Milvus names allow letters, digits and underscores only); the namespace, the embedder and its
dimension are the collection's properties, so a namespace indexed with another embedder is
refused, as in the embedded store. One row per chunk: primary key ``<document id>#<ordinal>``,
the document id, the ordinal, the text, the document's metadata (JSON) and the vector, under a
FLAT inner-product index (exact search: the embedded flat index's ranking).

Upsert replaces a document by upserting its new chunks by key and then deleting its chunks past
the new count, so a search never finds the document missing. A filter's every ``key=value`` must
match (a Milvus JSON expression, values escaped). Milvus acknowledges a write once its own log
holds it; ``consistency`` says what a search must see (``Strong``, the default: every
acknowledged write, whichever replica made it; ``Bounded``, ``Session`` or ``Eventually`` trade
that for latency). A Milvus that cannot be reached, or refuses a call, is ``BackendUnavailable``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from compressor.retrieval.chunker import Chunking
from compressor.retrieval.contract import (
    Document,
    Hit,
    Limits,
    check_embedder,
    check_ids,
    check_search,
    checked_namespace,
    chunked_documents,
    require_embedder,
)
from compressor.retrieval.errors import BackendUnavailable, EmbedderMismatch, IndexInputError, NamespaceNotFound

if TYPE_CHECKING:
    from compressor.embedding import Embedder

log = logging.getLogger("focal")

PREFIX = "focal_"
CONSISTENCY_LEVELS = ("Strong", "Bounded", "Session", "Eventually")
MAX_ID_BYTES = 1000  # the document id field's length (the key adds "#<ordinal>")
MAX_TEXT_BYTES = 65535  # Milvus's VARCHAR limit
OUTPUT = ["document_id", "chunk", "text", "metadata"]
# Connecting is tried this often: a channel pymilvus kept from an earlier client can be closed by the
# server (an idle HTTP/2 GOAWAY), and the first call on it fails where a fresh one succeeds.
CONNECT_ATTEMPTS = 3
_T = TypeVar("_T")


@dataclass(frozen=True)
class MilvusConfig:
    uri: str  # http(s)://host:port of Milvus (or a Milvus Lite .db path, for one process)
    token: str = ""  # "user:password" or an API key; empty = no authentication
    db_name: str = ""  # empty = Milvus's default database
    consistency: str = "Strong"
    timeout: float = 30.0  # seconds per Milvus call

    def __post_init__(self) -> None:
        if self.consistency not in CONSISTENCY_LEVELS:
            raise ValueError(f"milvus consistency: {self.consistency!r} is not one of {', '.join(CONSISTENCY_LEVELS)}")


@dataclass(frozen=True)
class _Collection:
    name: str
    namespace: str
    embedder: str
    dim: int


def collection_name(namespace: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_]", "_", namespace)
    return f"{PREFIX}{readable}_{hashlib.sha1(namespace.encode()).hexdigest()[:8]}"


def _literal(value: str) -> str:
    """A string literal of Milvus's expression language (JSON escaping: quotes and backslashes)."""
    return json.dumps(value)


def match_expression(where: dict[str, str]) -> str:
    return " and ".join(f"metadata[{_literal(key)}] == {_literal(value)}" for key, value in sorted(where.items()))


class MilvusStore:
    """The retrieval contract of ``IndexStore`` (upsert, delete, search, stats, close) on Milvus."""

    def __init__(self, config: MilvusConfig, embedder: Embedder | None, chunking: Chunking | None = None,
                 limits: Limits | None = None) -> None:
        from pymilvus import MilvusClient

        self.config = config
        self.embedder = embedder
        self.chunking = chunking or Chunking()
        self.limits = limits or Limits()
        self._known: dict[str, _Collection] = {}
        self._lock = threading.Lock()
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                self.client = self._call(lambda: MilvusClient(config.uri, token=config.token, db_name=config.db_name,
                                                              timeout=config.timeout))
                break
            except BackendUnavailable:
                if attempt + 1 == CONNECT_ATTEMPTS:
                    raise
                time.sleep(0.5 * 2**attempt)
        log.info("retrieval: Milvus", extra={"fields": {"uri": config.uri, "consistency": config.consistency}})

    def _call(self, work: Callable[[], _T]) -> _T:
        from pymilvus.exceptions import MilvusException

        try:
            return work()
        except MilvusException as exc:
            raise BackendUnavailable(f"Milvus at {self.config.uri}: {exc.message}") from exc
        except (ConnectionError, TimeoutError) as exc:
            raise BackendUnavailable(f"Milvus at {self.config.uri} cannot be reached: {exc}") from exc

    # ---- namespaces ----------------------------------------------------------------------------

    def _describe(self, name: str) -> _Collection | None:
        with self._lock:
            if name in self._known:
                return self._known[name]
        table = collection_name(name)
        if not self._call(lambda: self.client.has_collection(table)):
            return None
        properties = self._call(lambda: self.client.describe_collection(table)).get("properties", {})
        if "focal.embedder" not in properties:
            raise EmbedderMismatch(f"Milvus collection {table} was not created by Focal (or is being created): "
                                   "it has no embedder recorded")
        found = _Collection(table, properties["focal.namespace"], properties["focal.embedder"],
                            int(properties["focal.dim"]))
        with self._lock:
            self._known[name] = found
        return found

    def _existing(self, name: str) -> _Collection:
        found = self._describe(name)
        if found is None:
            raise NamespaceNotFound(name)
        self._check_embedder(found)
        return found

    def _check_embedder(self, found: _Collection) -> None:
        check_embedder(found.namespace, found.embedder, found.dim, self.embedder)

    def _create(self, name: str) -> _Collection:
        from pymilvus import DataType

        table, dim = collection_name(name), self.embedder.dim
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES + 24)
        schema.add_field("document_id", DataType.VARCHAR, max_length=MAX_ID_BYTES)
        schema.add_field("chunk", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type="FLAT", metric_type="IP")
        properties = {"focal.namespace": name, "focal.embedder": self.embedder.name, "focal.dim": str(dim)}
        try:
            self._call(lambda: self.client.create_collection(table, schema=schema, index_params=index,
                                                             consistency_level=self.config.consistency,
                                                             properties=properties))
            log.info("retrieval: created Milvus collection", extra={"fields": {"namespace": name, "collection": table}})
        except BackendUnavailable:
            if not self._call(lambda: self.client.has_collection(table)):
                raise
            # Another replica created it first: use theirs, after checking its embedder.
        found = self._describe(name)
        self._check_embedder(found)
        return found

    # ---- operations ----------------------------------------------------------------------------

    def upsert(self, namespace: str, documents: list[Document], progress: bool = False) -> tuple[int, int]:
        """Chunk, embed and store ``documents`` (replacing any with the same id); (documents, chunks)."""
        name = checked_namespace(namespace)
        chunked = chunked_documents(documents, self.limits, self.chunking)
        for index, doc in enumerate(documents):
            if len(doc.id.encode()) > MAX_ID_BYTES:
                raise IndexInputError(f"documents[{index}].id", f"longer than {MAX_ID_BYTES} bytes")
        embedder = require_embedder(self.embedder)
        found = self._describe(name)
        if found is not None:
            self._check_embedder(found)
        texts = [c for chunks in chunked for c in chunks]
        for chunk in texts:
            if len(chunk.encode()) > MAX_TEXT_BYTES:
                raise IndexInputError("documents", f"a chunk of {len(chunk.encode())} bytes exceeds Milvus's "
                                                   f"{MAX_TEXT_BYTES}: lower chunk_chars")
        vectors = embedder.embed(texts, progress=progress)
        found = found or self._create(name)
        rows, position = [], 0
        for doc, chunks in zip(documents, chunked):
            for ordinal, text in enumerate(chunks):
                rows.append({"key": f"{doc.id}#{ordinal}", "document_id": doc.id, "chunk": ordinal, "text": text,
                             "metadata": dict(doc.metadata), "vector": vectors[position].tolist()})
                position += 1
        self._call(lambda: self.client.upsert(found.name, rows))
        by_count: dict[int, list[str]] = {}
        for doc, chunks in zip(documents, chunked):
            by_count.setdefault(len(chunks), []).append(doc.id)
        for count, ids in by_count.items():
            stale = f"document_id in {json.dumps(ids)} and chunk >= {count}"
            self._call(lambda stale=stale: self.client.delete(found.name, filter=stale))
        return len(documents), len(rows)

    def delete(self, namespace: str, ids: list[str]) -> int:
        """Delete documents by id; returns how many existed."""
        name = checked_namespace(namespace)
        check_ids(ids)
        found = self._existing(name)
        unique = json.dumps(list(dict.fromkeys(ids)))
        present = self._call(lambda: self.client.query(
            found.name, filter=f"document_id in {unique} and chunk == 0", output_fields=["document_id"],
            consistency_level=self.config.consistency))
        if present:
            self._call(lambda: self.client.delete(found.name, filter=f"document_id in {unique}"))
        return len(present)

    def search(self, namespace: str, query: str, top_k: int, where: dict[str, str] | None = None) -> list[Hit]:
        name = checked_namespace(namespace)
        check_search(query, top_k, self.limits)
        found = self._existing(name)
        vector = self.embedder.embed([query])[0].tolist()
        result = self._call(lambda: self.client.search(
            found.name, [vector], limit=top_k, filter=match_expression(where) if where else "",
            output_fields=OUTPUT, search_params={"metric_type": "IP"}, consistency_level=self.config.consistency))
        hits = []
        for match in result[0]:
            entity = match["entity"]
            hits.append(Hit(entity["document_id"], int(entity["chunk"]), entity["text"], float(match["distance"]),
                            {str(k): str(v) for k, v in (entity["metadata"] or {}).items()}))
        return hits

    def stats(self) -> dict:
        namespaces = {}
        for table in self._call(self.client.list_collections):
            if not table.startswith(PREFIX):
                continue
            properties = self._call(lambda table=table: self.client.describe_collection(table)).get("properties", {})
            if "focal.namespace" not in properties:
                continue

            def count(expression: str, table: str = table) -> int:
                rows = self._call(lambda: self.client.query(table, filter=expression, output_fields=["count(*)"],
                                                            consistency_level=self.config.consistency))
                return int(rows[0]["count(*)"])

            namespaces[properties["focal.namespace"]] = {
                "documents": count("chunk == 0"), "chunks": count("chunk >= 0"), "dim": int(properties["focal.dim"]),
                "embedder": properties["focal.embedder"], "index_type": "FLAT", "tombstones": 0}
        return {"embedder": self.embedder.name if self.embedder else "",
                "dim": self.embedder.dim if self.embedder else 0, "index": {"kind": "milvus"}, "log_bytes": 0,
                "backend": "milvus", "uri": self.config.uri, "consistency": self.config.consistency,
                "namespaces": dict(sorted(namespaces.items()))}

    def close(self) -> None:
        self._call(self.client.close)
