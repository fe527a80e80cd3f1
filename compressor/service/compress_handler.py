"""The Compress RPC: validate, optionally retrieve, admit to the scheduler, wait, reply.

Refusals are typed exceptions answered through ``service.status``; this module holds no
compression logic (that is ``compressor.compression``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
from focal_client.rpc.focal.compressor.v1 import compressor_pb2 as pb

from compressor.compression.pipeline import Compressor
from compressor.compression.request import Chunk, CompressionInputError, CompressRequest
from compressor.service.metrics import Metrics
from compressor.service.protocol import to_request, to_response
from compressor.service.scheduler import Abandoned, Draining, Scheduler
from compressor.service.settings import Settings
from compressor.service.status import ClientCancelled, DeadlineExceeded, RetrievalOff

# A time_remaining() beyond this many seconds (11 days) is grpc-python's way of saying "no deadline".
_NO_DEADLINE = 1e6
_EXPIRED = "the deadline passed before the compression finished; its work was dropped"


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

    def _count(self, request: CompressRequest) -> int:
        """Tokens the request brings: chunks, the separators between them, question and instruction
        (each bounded by the settings; the total by ``max_request_tokens``)."""
        options = request.options
        texts = [c.text for c in request.chunks] + [options.separator, request.query, options.instruction]
        counts = [len(ids) for ids in self.compressor.engine.tokenizer.encode_batch(texts)]
        separators = counts[-3] * max(len(request.chunks) - 1, 0)
        tokens = sum(counts[:-3]) + separators + counts[-2] + counts[-1]
        if tokens > self.settings.max_request_tokens:
            raise CompressionInputError("chunks", f"{tokens} tokens (chunks, separators, query and instruction) "
                                                  f"exceed the limit of {self.settings.max_request_tokens} per request")
        return tokens

    def _deadline(self, context: grpc.ServicerContext, started: float) -> float | None:
        """The client's deadline, or ``default_deadline_seconds`` when it set none (so every call's
        work is bounded). Without a deadline, grpc-python reports a huge ``time_remaining()`` (beyond
        what a timer accepts) rather than None."""
        remaining = context.time_remaining()
        if remaining is None or remaining > _NO_DEADLINE:
            remaining = self.settings.default_deadline_seconds or None
        return None if remaining is None else started + remaining

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
        tokens = self._count(request)
        deadline = self._deadline(context, started)
        ticket = self.scheduler.submit(request, deadline, tokens)
        context.add_callback(lambda: self.scheduler.cancel(ticket))
        if not ticket.done.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
            self.scheduler.cancel(ticket)
            raise DeadlineExceeded(_EXPIRED)
        if isinstance(ticket.error, Abandoned):
            if ticket.expired():
                raise DeadlineExceeded(_EXPIRED)
            raise ClientCancelled("the client cancelled the request; its work was dropped")
        if ticket.error is not None:
            raise ticket.error
        result = ticket.result
        fields.update(tokens_in=result.original_tokens, tokens_out=result.compressed_tokens,
                      batch=ticket.batch_size, method=request.method)
        self.metrics.tokens_in.inc(result.original_tokens)
        self.metrics.tokens_out.inc(result.compressed_tokens)
        self.metrics.ratio.observe(result.ratio)
        self.metrics.latency.labels(request.method).observe(time.monotonic() - started)
        return to_response(result, fields["request_id"], self.model_name,
                           (ticket.started or started) - ticket.enqueued)
