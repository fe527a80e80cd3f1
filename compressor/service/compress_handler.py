"""The Compress RPC: validate, optionally retrieve, admit to the scheduler, wait, reply.

Refusals are typed exceptions answered through ``service.status``; this module holds no
compression logic (that is ``compressor.compression``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc

from compressor.compression.pipeline import Compressor
from compressor.compression.request import Chunk, CompressionInputError
from compressor.rpc.focal.compressor.v1 import compressor_pb2 as pb
from compressor.service.metrics import Metrics
from compressor.service.protocol import to_request, to_response
from compressor.service.scheduler import Abandoned, Draining, Scheduler
from compressor.service.settings import Settings
from compressor.service.status import ClientCancelled, DeadlineExceeded, RetrievalOff


def retrieve(store, message: pb.CompressRequest, given: list[Chunk]) -> list[Chunk]:
    """The chunks ``Compress`` retrieves for ``message`` (those whose id is among ``given`` are skipped)."""
    if store is None:
        raise RetrievalOff("retrieve_top_k")
    if not message.query.strip():
        raise CompressionInputError("query", "is required with retrieve_top_k")
    taken = {c.id for c in given}
    hits = store.search(message.namespace, message.query, message.retrieve_top_k, dict(message.filter) or None)
    return [Chunk(h.id, h.text, h.score, h.metadata) for h in hits if h.id not in taken]


class CompressHandler:
    def __init__(self, compressor: Compressor, scheduler: Scheduler, settings: Settings, metrics: Metrics,
                 model_name: str, store, draining: threading.Event) -> None:
        self.compressor = compressor
        self.scheduler = scheduler
        self.settings = settings
        self.metrics = metrics
        self.model_name = model_name
        self.store = store
        self.draining = draining

    def __call__(self, message: pb.CompressRequest, context: grpc.ServicerContext,
                 fields: dict[str, Any]) -> pb.CompressResponse:
        started = time.monotonic()
        fields["chunks"] = len(message.chunks)
        if self.draining.is_set():
            raise Draining()
        request = to_request(message, self.settings)
        if message.retrieve_top_k:
            request.chunks += retrieve(self.store, message, request.chunks)
            self.metrics.retrieval_latency.observe(time.monotonic() - started)
            fields["retrieved"] = message.retrieve_top_k
        tokens = sum(len(ids) for ids in self.compressor.engine.tokenizer.encode_batch(
            [c.text for c in request.chunks]))
        if tokens > self.settings.max_request_tokens:
            raise CompressionInputError("chunks", f"{tokens} tokens exceed the limit of "
                                                  f"{self.settings.max_request_tokens} per request")
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        ticket = self.scheduler.submit(request, deadline)
        try:
            self.metrics.queue_depth.set(self.scheduler.admitted)
            context.add_callback(lambda: self.scheduler.cancel(ticket))
            if not ticket.done.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
                self.scheduler.cancel(ticket)
                raise DeadlineExceeded("the deadline passed before the compression finished; its work was dropped")
            if isinstance(ticket.error, Abandoned):
                kind = DeadlineExceeded if context.is_active() else ClientCancelled
                raise kind("the request was abandoned before it finished")
            if ticket.error is not None:
                raise ticket.error
        finally:
            self.metrics.queue_depth.set(self.scheduler.admitted)
        result = ticket.result
        fields.update(tokens_in=result.original_tokens, tokens_out=result.compressed_tokens,
                      batch=ticket.batch_size, method=request.method)
        self.metrics.tokens_in.inc(result.original_tokens)
        self.metrics.tokens_out.inc(result.compressed_tokens)
        self.metrics.ratio.observe(result.ratio)
        self.metrics.latency.labels(request.method).observe(time.monotonic() - started)
        return to_response(result, fields["request_id"], self.model_name,
                           (ticket.started or started) - ticket.enqueued)
