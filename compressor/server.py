"""The gRPC server: Compressor service, health, reflection, auth, TLS, metrics, graceful drain.

Status codes (see the .proto): INVALID_ARGUMENT for bad or oversized input (the message names the
field and the limit), RESOURCE_EXHAUSTED when the admission queue is full, DEADLINE_EXCEEDED /
CANCELLED when the client gives up (its work is dropped), UNAUTHENTICATED for a missing or wrong
bearer token, UNAVAILABLE while draining, INTERNAL for bugs (logged with the request id only).
Logs are one JSON object per line and never contain request text.
"""

from __future__ import annotations

import hmac
import json
import logging
import signal
import threading
import time
import uuid
from concurrent import futures
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from compressor.compressor import Compressor
from compressor.index_service import INDEX_SERVICE, IndexService, Refused, retrieve, status_of
from compressor.metrics import Metrics
from compressor.rpc.focal.compressor.v1 import compressor_pb2 as pb
from compressor.rpc.focal.compressor.v1 import compressor_pb2_grpc as pb_grpc
from compressor.scheduler import Abandoned, Draining, QueueFull, Scheduler
from compressor.settings import Settings
from compressor.types import CompressionInputError
from compressor.wire import Unreadable, request_parser, to_request, to_response
from engine import Engine
from engine.device import parse_device, parse_dtype

SERVICE = pb.DESCRIPTOR.services_by_name["Compressor"].full_name
log = logging.getLogger("focal")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname, "event": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


class CompressorService(pb_grpc.CompressorServicer):
    def __init__(self, compressor: Compressor, scheduler: Scheduler, settings: Settings, metrics: Metrics,
                 model_name: str, store=None) -> None:
        self.compressor = compressor
        self.store = store
        self.scheduler = scheduler
        self.settings = settings
        self.metrics = metrics
        self.model_name = model_name
        self.draining = threading.Event()

    def Compress(self, message: pb.CompressRequest | Unreadable, context: grpc.ServicerContext) -> pb.CompressResponse:
        request_id = uuid.uuid4().hex[:16]
        started = time.monotonic()
        readable = isinstance(message, pb.CompressRequest)
        code, fields = grpc.StatusCode.OK, {"request_id": request_id, "chunks": len(message.chunks) if readable else 0}
        try:
            if not readable:
                code = grpc.StatusCode.INVALID_ARGUMENT
                context.abort(code, message.reason)
            if self.draining.is_set():
                code = grpc.StatusCode.UNAVAILABLE
                context.abort(code, "the server is draining (shutting down); retry on another replica")
            try:
                request = to_request(message, self.settings)
                if message.retrieve_top_k:
                    retrieval_started = time.monotonic()
                    request.chunks += retrieve(self.store, message, request.chunks)
                    self.metrics.retrieval_latency.observe(time.monotonic() - retrieval_started)
                    fields["retrieved"] = message.retrieve_top_k
            except Refused as refused:
                code = refused.code
                context.abort(code, str(refused))
            except Exception as exc:
                code = status_of(exc) or grpc.StatusCode.OK
                if code == grpc.StatusCode.OK:
                    raise
                context.abort(code, str(exc))
            tokens = sum(len(ids) for ids in self.compressor.engine.tokenizer.encode_batch(
                [c.text for c in request.chunks]))
            if tokens > self.settings.max_request_tokens:
                code = grpc.StatusCode.INVALID_ARGUMENT
                context.abort(code, f"chunks: {tokens} tokens exceed the limit of {self.settings.max_request_tokens} "
                                    "per request")
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            try:
                job = self.scheduler.submit(request, deadline)
            except QueueFull:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                context.abort(code, f"server busy: all {self.scheduler.capacity} admission slots are taken; "
                                    "retry with backoff")
            except Draining:
                code = grpc.StatusCode.UNAVAILABLE
                context.abort(code, "the server is draining (shutting down); retry on another replica")
            self.metrics.queue_depth.set(self.scheduler.admitted)
            context.add_callback(lambda: self.scheduler.cancel(job))
            if not job.done.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
                self.scheduler.cancel(job)
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                context.abort(code, "the deadline passed before the compression finished; its work was dropped")
            if isinstance(job.error, Abandoned):
                code = grpc.StatusCode.DEADLINE_EXCEEDED if context.is_active() else grpc.StatusCode.CANCELLED
                context.abort(code, "the request was abandoned before it finished")
            if isinstance(job.error, CompressionInputError):
                code = grpc.StatusCode.INVALID_ARGUMENT
                context.abort(code, str(job.error))
            if job.error is not None:
                raise job.error
            result = job.result
            fields.update(tokens_in=result.original_tokens, tokens_out=result.compressed_tokens,
                          batch=job.batch_size, method=request.method)
            self.metrics.tokens_in.inc(result.original_tokens)
            self.metrics.tokens_out.inc(result.compressed_tokens)
            self.metrics.ratio.observe(result.ratio)
            self.metrics.latency.labels(request.method).observe(time.monotonic() - started)
            return to_response(result, request_id, self.model_name, (job.started or started) - job.enqueued)
        except Exception:
            if code == grpc.StatusCode.OK:  # not an abort of ours: a bug
                code = grpc.StatusCode.INTERNAL
                log.exception("internal error", extra={"fields": fields})
                context.abort(code, f"internal error (request id {request_id})")
            raise
        finally:
            self.metrics.requests.labels(code.name).inc()
            self.metrics.queue_depth.set(self.scheduler.admitted)
            fields.update(code=code.name, ms=round((time.monotonic() - started) * 1000, 1))
            log.info("compress", extra={"fields": fields})


class BearerAuth(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on the Compressor and Index services (health and reflection
    stay open)."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}".encode()

        def deny(_request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self.denied = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, details):
        if not details.method.startswith((f"/{SERVICE}/", f"/{INDEX_SERVICE}/")):
            return continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode(), self.expected):
            return continuation(details)
        return self.denied


class FocalServer:
    """A running server; ``drain()`` stops it gracefully."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        if settings.threads:
            torch.set_num_threads(settings.threads)
        if engine is None:
            device = parse_device(settings.device)
            engine = Engine.load(settings.model or None, dtype=parse_dtype(settings.dtype, device), device=device,
                                 quantize=settings.quantize, prefix_cache_bytes=settings.prefix_cache_mb << 20,
                                 compile_model=settings.compile)
            if settings.compile:
                log.info("compiling the model before serving", extra={"fields": {}})
                log.info("compiled", extra={"fields": {"seconds": round(engine.warm_up(), 1)}})
        self.engine = engine
        self.metrics = Metrics()
        compressor = Compressor(engine)
        # Tokens per expert per sparse layer (MoE models), published with each batch.
        self.routing = engine.model.track_routing() if engine.config.num_sparse_layers else None
        self.scheduler = Scheduler(compressor, settings.max_batch, settings.queue_depth, on_batch=self._on_batch)
        model_name = Path(settings.model).name if settings.model else "SmolLM2-135M-Instruct (default)"
        self.store = open_store(settings) if settings.data_dir else None
        self.service = CompressorService(compressor, self.scheduler, settings, self.metrics, model_name, self.store)
        self.index = IndexService(self.store, self.metrics, self.service.draining)
        interceptors = [BearerAuth(settings.token())] if settings.token() else []
        limit = settings.max_message_bytes
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.scheduler.capacity + 8, thread_name_prefix="focal-rpc"),
            interceptors=interceptors,
            # grpc's own cap is a backstop at 4x; the handler enforces the configured limit with a clear error.
            options=[("grpc.max_receive_message_length", 4 * limit), ("grpc.max_send_message_length", 4 * limit)],
            maximum_concurrent_rpcs=self.scheduler.capacity + 32,
        )
        compress = grpc.unary_unary_rpc_method_handler(
            self.service.Compress, request_deserializer=request_parser(pb.CompressRequest, limit),
            response_serializer=pb.CompressResponse.SerializeToString)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Compress": compress}),
                                              self.index.handlers(limit)))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE, INDEX_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.server)
        address = f"{settings.host}:{settings.port}"
        if settings.tls_cert and settings.tls_key:
            client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())],
                root_certificates=client_ca, require_client_auth=client_ca is not None)
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        # Kubelet's gRPC probes speak plaintext only: with TLS on, health also answers on its own port.
        self.health_server = None
        if settings.health_port:
            self.health_server = grpc.server(futures.ThreadPoolExecutor(2, thread_name_prefix="focal-health"))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_server.add_insecure_port(f"{settings.host}:{settings.health_port}")
        self.metrics_server = (self.metrics.serve(settings.metrics_host, settings.metrics_port)
                               if settings.metrics_port else None)

    def _on_batch(self, size: int) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.record_prefix_cache(self.engine.prefix_cache.stats)
        if self.routing is not None:  # counts as of the batches finished so far
            self.metrics.record_routing({layer: hits.tolist() for layer, hits in self.routing.counts.items()})

    def start(self) -> FocalServer:
        self.server.start()
        if self.health_server is not None:
            self.health_server.start()
        for name in ("", SERVICE, INDEX_SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        fields = {"port": self.port, "metrics_port": self.settings.metrics_port,
                  "tls": bool(self.settings.tls_cert), "auth": bool(self.settings.token())}
        log.info("serving", extra={"fields": fields})
        return self

    def drain(self) -> None:
        """Health NOT_SERVING, refuse new work (UNAVAILABLE), let in-flight requests finish, stop."""
        log.info("draining", extra={"fields": {"in_flight": self.scheduler.admitted}})
        self.health.enter_graceful_shutdown()
        self.service.draining.set()
        self.scheduler.drain()
        waited = time.monotonic() + self.settings.drain_seconds
        while self.scheduler.admitted and time.monotonic() < waited:
            time.sleep(0.05)
        self.server.stop(grace=max(0.0, waited - time.monotonic())).wait()
        if self.health_server is not None:
            self.health_server.stop(grace=None)
        if self.store is not None:
            self.store.close()  # a last snapshot: the next start replays nothing
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        log.info("stopped", extra={"fields": {}})


def open_store(settings: Settings):
    """The retrieval index of ``settings.data_dir`` (faiss and the embedder load only here)."""
    from compressor.chunker import Chunking
    from compressor.embedder import Embedder
    from compressor.index_store import IndexStore, Limits

    embedder = Embedder(settings.embedder or None, settings.embedder_dim, settings.embed_batch)
    return IndexStore(settings.data_dir, embedder, settings.index_spec(),
                      Chunking(settings.chunk_chars, settings.chunk_overlap),
                      Limits(settings.max_documents, settings.max_document_chars, settings.max_top_k),
                      settings.snapshot_every)


def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT, then drain. Returns the exit status."""
    from compressor.index_errors import IndexCorrupt

    configure_logging(settings.log_level)
    try:
        server = FocalServer(settings).start()
    except (IndexCorrupt, ValueError, OSError) as exc:
        log.error("cannot start", extra={"fields": {"error": str(exc)}})
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.drain()
    return 0
