"""The gRPC server: the Compressor and Index services, health, reflection, auth, TLS, metrics, drain.

Status codes (see the .proto and ``service.status``): INVALID_ARGUMENT for bad or oversized input,
RESOURCE_EXHAUSTED when the admission queue is full, DEADLINE_EXCEEDED / CANCELLED when the client
gives up (its work is dropped), UNAUTHENTICATED for a missing or wrong bearer token, UNAVAILABLE
while draining, INTERNAL for bugs (logged with the request id only).
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import torch
from focal_client.rpc.focal.compressor.v1 import compressor_pb2 as pb
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from compressor.compression.counting import token_counters
from compressor.compression.digest import DigestLimits
from compressor.compression.pipeline import Compressor
from compressor.service.auth import BearerAuth
from compressor.service.compress_handler import CompressHandler
from compressor.service.handling import unary
from compressor.service.index_handler import INDEX_SERVICE, IndexHandlers
from compressor.service.logs import log
from compressor.service.metrics import Metrics
from compressor.service.protocol import request_parser
from compressor.service.scheduler import Hooks, Scheduler
from compressor.service.settings import Settings
from engine import Engine, EngineOptions, native
from engine.device import parse_device, parse_dtype

SERVICE = pb.DESCRIPTOR.services_by_name["Compressor"].full_name
# gRPC's default SO_REUSEPORT lets a second server bind a port that is taken, and the kernel then
# splits calls between the two processes: a port in use must fail the start instead.
_EXCLUSIVE_PORT = [("grpc.so_reuseport", 0)]


def _load_engine(settings: Settings) -> Engine:
    device = parse_device(settings.device)
    options = EngineOptions(prefix_cache_bytes=settings.prefix_cache_mb << 20, compile_model=settings.compile)
    engine = Engine.load(settings.model or None, dtype=parse_dtype(settings.dtype, device), device=device,
                         quantize=settings.quantize, options=options)
    if device.type == "cpu":
        log.info("decode kernels", extra={"fields": {"native": native.status()}})
    if settings.compile:
        log.info("compiling the model before serving", extra={"fields": {}})
        seconds = round(engine.warm_up(), 1)
        stats = engine.compile_stats
        log.info(stats.state, extra={"fields": {"seconds": seconds, "graphs_compiled": stats.compiled,
                                                "graphs_failed": len(stats.failures)}})
    return engine


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert:
        return None
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())],
                                       root_certificates=client_ca, require_client_auth=client_ca is not None)


def _bind(server: grpc.Server, host: str, port: int, credentials: grpc.ServerCredentials | None) -> int:
    """Bind ``host:port`` (0 = any free port); returns the port. A port that cannot be had is an OSError."""
    address = f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc's way of saying the bind failed
        raise OSError(f"cannot listen on {address}: the port is in use or the address is not local") from exc
    if not bound:
        raise OSError(f"cannot listen on {address}: the port is in use or the address is not local")
    return bound


class FocalServer:
    """A running server; ``drain()`` stops it gracefully."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        settings.validate()  # before the model loads: a bad setting costs no load time
        self.settings = settings
        token = settings.token()
        self.auth_enabled = bool(token)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.engine = engine or _load_engine(settings)
        self.metrics = Metrics()
        if self.engine.compile_stats is not None:
            self.metrics.record_compile(self.engine.compile_stats)
        compressor = Compressor(self.engine, digest_limits=DigestLimits(
            max_tokens=settings.digest_max_tokens, max_seconds=settings.digest_max_seconds),
            tokenizers=token_counters(settings.named_tokenizers()))
        # Tokens per expert per sparse layer (MoE models), published with each batch.
        self.routing = self.engine.model.track_routing() if self.engine.config.num_sparse_layers else None
        self.scheduler = Scheduler(compressor, settings.max_batch, settings.queue_depth, Hooks(
            batch_done=self._on_batch, admitted=self.metrics.queue_depth.set,
            retried=lambda _size: self.metrics.batch_retries.inc()))
        interceptors = [BearerAuth(token, (SERVICE, INDEX_SERVICE), self.metrics)] if token else []
        limit = settings.max_message_bytes
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.scheduler.capacity + 8, thread_name_prefix="focal-rpc"),
            interceptors=interceptors,
            # grpc's own cap is a backstop at 4x; the handler enforces the configured limit with a clear error.
            options=[("grpc.max_receive_message_length", 4 * limit), ("grpc.max_send_message_length", 4 * limit),
                     *_EXCLUSIVE_PORT],
            maximum_concurrent_rpcs=self.scheduler.capacity + 32,
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE, INDEX_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.server)
        self.port = _bind(self.server, settings.host, settings.port, _credentials(settings))
        # Kubelet's gRPC probes speak plaintext only: with TLS on, health also answers on its own port.
        self.health_server = None
        if settings.health_port:
            self.health_server = grpc.server(futures.ThreadPoolExecutor(2, thread_name_prefix="focal-health"),
                                             options=_EXCLUSIVE_PORT)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            _bind(self.health_server, settings.host, settings.health_port, None)
        self.metrics_server = (self.metrics.serve(settings.metrics_host, settings.metrics_port)
                               if settings.metrics_port else None)
        # The data directory opens once the ports are ours: a start that fails leaves it unlocked.
        self.store = None
        if settings.retrieval_on:
            from compressor.retrieval.opening import open_store

            self.store = open_store(settings.store_config())
        self.draining = threading.Event()
        model_name = Path(settings.model).name if settings.model else "SmolLM2-135M-Instruct (default)"
        self.compress = CompressHandler(compressor, self.scheduler, settings, self.metrics, model_name, self.store,
                                        self.draining)
        self.index = IndexHandlers(self.store, self.metrics, self.draining)
        compress = grpc.unary_unary_rpc_method_handler(
            unary(SERVICE, "Compress", self.compress, self.metrics, self._record_compress),
            request_deserializer=request_parser(pb.CompressRequest, limit),
            response_serializer=pb.CompressResponse.SerializeToString)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Compress": compress}),
                                              self.index.handlers(limit)))

    def _record_compress(self, code: grpc.StatusCode, _seconds: float) -> None:
        self.metrics.requests.labels(code.name).inc()

    def _on_batch(self, size: int) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.record_prefix_cache(self.engine.prefix_cache.stats)
        if self.engine.compile_stats is not None:
            self.metrics.record_compile(self.engine.compile_stats)
        if self.routing is not None:  # counts as of the batches finished so far
            self.metrics.record_routing({layer: hits.tolist() for layer, hits in self.routing.counts.items()})

    def start(self) -> FocalServer:
        self.server.start()
        if self.health_server is not None:
            self.health_server.start()
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            self.health.set(name, serving)
        self.health.set(INDEX_SERVICE, serving if self.store is not None else not_serving)
        fields = {"port": self.port, "metrics_port": self.settings.metrics_port,
                  "tls": bool(self.settings.tls_cert), "auth": self.auth_enabled}
        log.info("serving", extra={"fields": fields})
        return self

    def drain(self) -> None:
        """Health NOT_SERVING, refuse new work (UNAVAILABLE), let in-flight requests finish, stop."""
        log.info("draining", extra={"fields": {"in_flight": self.scheduler.admitted}})
        self.health.enter_graceful_shutdown()
        self.draining.set()
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
