"""The gRPC Index service (Upsert, Delete, Search, Stats) over an ``IndexStore``, and the retrieval
step of Compress. Errors: INVALID_ARGUMENT (bad input, named field), NOT_FOUND (namespace),
FAILED_PRECONDITION (retrieval off, or an embedder change), UNAVAILABLE (draining)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

import grpc

from compressor.index_errors import EmbedderMismatch, IndexInputError, NamespaceNotFound
from compressor.metrics import Metrics
from compressor.rpc.focal.compressor.v1 import compressor_pb2 as pb
from compressor.types import Chunk, CompressionInputError
from compressor.wire import Unreadable, request_parser

INDEX_SERVICE = pb.DESCRIPTOR.services_by_name["Index"].full_name
log = logging.getLogger("focal")
RETRIEVAL_OFF = "retrieval is off on this server: start it with --data-dir (FOCAL_DATA_DIR) to enable the index"


def status_of(error: BaseException) -> grpc.StatusCode | None:
    """The status code of an expected error of the index, or None for a bug."""
    if isinstance(error, (IndexInputError, CompressionInputError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, NamespaceNotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, EmbedderMismatch):
        return grpc.StatusCode.FAILED_PRECONDITION
    return None


def retrieve(store, message: pb.CompressRequest, given: list[Chunk]) -> list[Chunk]:
    """The chunks ``Compress`` retrieves for ``message`` (those whose id is among ``given`` are skipped)."""
    if store is None:
        raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"retrieve_top_k: {RETRIEVAL_OFF}")
    if not message.query.strip():
        raise CompressionInputError("query", "is required with retrieve_top_k")
    taken = {c.id for c in given}
    hits = store.search(message.namespace, message.query, message.retrieve_top_k, dict(message.filter) or None)
    return [Chunk(h.id, h.text, h.score, h.metadata) for h in hits if h.id not in taken]


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class IndexService:
    def __init__(self, store, metrics: Metrics, draining: threading.Event) -> None:
        self.store = store
        self.metrics = metrics
        self.draining = draining

    def _call(self, name: str, work: Callable[[object], object]):
        def handler(message, context: grpc.ServicerContext):
            request_id = uuid.uuid4().hex[:16]
            started = time.monotonic()
            code = grpc.StatusCode.OK
            try:
                if isinstance(message, Unreadable):
                    raise Refused(grpc.StatusCode.INVALID_ARGUMENT, message.reason)
                if self.store is None:
                    raise Refused(grpc.StatusCode.FAILED_PRECONDITION, RETRIEVAL_OFF)
                if self.draining.is_set():
                    raise Refused(grpc.StatusCode.UNAVAILABLE, "the server is draining (shutting down); retry later")
                return work(message)
            except Refused as refused:
                code = refused.code
                context.abort(code, str(refused))
            except Exception as exc:
                code = status_of(exc) or grpc.StatusCode.INTERNAL
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("internal error", extra={"fields": {"request_id": request_id, "rpc": name}})
                    context.abort(code, f"internal error (request id {request_id})")
                context.abort(code, str(exc))
            finally:
                self.metrics.index_requests.labels(name, code.name).inc()
                self.metrics.index_latency.labels(name).observe(time.monotonic() - started)
                log.info(name.lower(), extra={"fields": {"request_id": request_id, "code": code.name,
                                                         "ms": round((time.monotonic() - started) * 1000, 1)}})

        return handler

    def _upsert(self, message: pb.UpsertRequest) -> pb.UpsertResponse:
        from compressor.index_store import Document

        documents = [Document(d.id, d.text, dict(d.metadata)) for d in message.documents]
        count, chunks = self.store.upsert(message.namespace, documents)
        return pb.UpsertResponse(documents=count, chunks=chunks)

    def _delete(self, message: pb.DeleteRequest) -> pb.DeleteResponse:
        return pb.DeleteResponse(deleted=self.store.delete(message.namespace, list(message.ids)))

    def _search(self, message: pb.SearchRequest) -> pb.SearchResponse:
        hits = self.store.search(message.namespace, message.query, message.top_k or 10, dict(message.filter) or None)
        return pb.SearchResponse(hits=[pb.Hit(document_id=h.document_id, chunk=h.chunk, text=h.text, score=h.score,
                                              metadata=h.metadata) for h in hits])

    def _stats(self, _message: pb.StatsRequest) -> pb.StatsResponse:
        stats = self.store.stats()
        return pb.StatsResponse(
            namespaces=[pb.NamespaceStats(name=name, documents=s["documents"], chunks=s["chunks"], dim=s["dim"],
                                          embedder=s["embedder"]) for name, s in stats["namespaces"].items()],
            embedder=stats["embedder"], index_type=stats["index"]["kind"], log_bytes=stats["log_bytes"])

    def handlers(self, limit: int) -> grpc.GenericRpcHandler:
        methods = {
            "Upsert": (self._upsert, pb.UpsertRequest, pb.UpsertResponse),
            "Delete": (self._delete, pb.DeleteRequest, pb.DeleteResponse),
            "Search": (self._search, pb.SearchRequest, pb.SearchResponse),
            "Stats": (self._stats, pb.StatsRequest, pb.StatsResponse),
        }
        return grpc.method_handlers_generic_handler(INDEX_SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(
                self._call(name, work), request_deserializer=request_parser(request, limit),
                response_serializer=response.SerializeToString)
            for name, (work, request, response) in methods.items()})
