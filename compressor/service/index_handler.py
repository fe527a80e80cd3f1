"""The gRPC Index service (Upsert, Delete, Search, Stats) over an ``IndexStore``. Errors:
INVALID_ARGUMENT (bad input, named field), NOT_FOUND (namespace), FAILED_PRECONDITION (retrieval
off, or an embedder change), UNAVAILABLE (draining), through ``service.status``."""

from __future__ import annotations

import threading
from typing import Any

import grpc
from focal_client.rpc.focal.compressor.v1 import compressor_pb2 as pb

from compressor.service.handling import unary
from compressor.service.metrics import Metrics
from compressor.service.protocol import request_parser
from compressor.service.scheduler import Draining
from compressor.service.status import RetrievalOff

INDEX_SERVICE = pb.DESCRIPTOR.services_by_name["Index"].full_name


class IndexHandlers:
    def __init__(self, store, metrics: Metrics, draining: threading.Event) -> None:
        self.store = store
        self.metrics = metrics
        self.draining = draining

    def _guarded(self, work):
        def run(message, _context: grpc.ServicerContext, _fields: dict[str, Any]):
            if self.store is None:
                raise RetrievalOff()
            if self.draining.is_set():
                raise Draining()
            return work(message)

        return run

    def _record(self, rpc: str):
        def record(code: grpc.StatusCode, seconds: float) -> None:
            self.metrics.index_requests.labels(rpc, code.name).inc()
            self.metrics.index_latency.labels(rpc).observe(seconds)

        return record

    def _upsert(self, message: pb.UpsertRequest) -> pb.UpsertResponse:
        from compressor.retrieval.contract import Document

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
                unary(INDEX_SERVICE, name, self._guarded(work), self.metrics, self._record(name)),
                request_deserializer=request_parser(request, limit), response_serializer=response.SerializeToString)
            for name, (work, request, response) in methods.items()})
