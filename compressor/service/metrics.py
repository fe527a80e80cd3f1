"""Prometheus metrics of one server (own registry, so several servers can live in one process).

Nothing here carries request content: only counts, sizes, durations and status codes.
"""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from engine.compiled import CompileStats
from engine.prefix_cache import PrefixCacheStats

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2, 4, 8, 16, 32)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram("focal_request_seconds", "Compress latency, admission to reply", ["method"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.requests = Counter("focal_requests", "Compress calls by gRPC status code", ["code"], registry=r)
        self.tokens_in = Counter("focal_tokens_in", "Context tokens received", registry=r)
        self.tokens_out = Counter("focal_tokens_out", "Context tokens returned", registry=r)
        self.ratio = Histogram("focal_compression_ratio", "Original over compressed context tokens",
                               buckets=(1, 1.5, 2, 3, 4, 6, 8, 12, 16, 32), registry=r)
        self.queue_depth = Gauge("focal_queue_depth", "Requests admitted and not yet finished", registry=r)
        self.batch_size = Histogram("focal_batch_size", "Requests per engine batch",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r)
        self.expert_tokens = Counter("focal_expert_tokens", "Tokens routed to each expert (MoE models)",
                                     ["layer", "expert"], registry=r)
        self.handled = Counter("grpc_server_handled", "RPCs completed, by service, method and status code",
                               ["grpc_service", "grpc_method", "grpc_code"], registry=r)
        self.handling = Histogram("grpc_server_handling_seconds", "RPC latency, by service and method",
                                  ["grpc_service", "grpc_method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.auth_failures = Counter("focal_auth_failures", "Calls refused UNAUTHENTICATED, by reason",
                                     ["reason"], registry=r)
        self.batch_retries = Counter("focal_batch_retries", "Batches that failed and were retried one request "
                                                            "at a time", registry=r)
        self.index_requests = Counter("focal_index_requests", "Index calls by method and gRPC status code",
                                      ["rpc", "code"], registry=r)
        self.index_latency = Histogram("focal_index_seconds", "Index call latency", ["rpc"],
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.retrieval_latency = Histogram("focal_retrieval_seconds", "Retrieval step of Compress",
                                           buckets=_LATENCY_BUCKETS, registry=r)
        self.prefix_lookups = Counter("focal_prefix_cache_lookups", "Prompt prefixes looked up in the KV cache",
                                      registry=r)
        self.prefix_hits = Counter("focal_prefix_cache_hits", "Lookups that reused cached prefix KV", registry=r)
        self.prefix_reused = Counter("focal_prefix_cache_reused_tokens", "Prefix tokens not recomputed", registry=r)
        self.prefix_bytes = Gauge("focal_prefix_cache_bytes", "Bytes of prefix KV held", registry=r)
        self.compiled_graphs = Gauge("focal_compiled_graphs", "Model graphs torch.compile compiled (--compile)",
                                     registry=r)
        self.compile_failures = Gauge("focal_compile_failures", "Model graphs that failed to compile and run "
                                      "eagerly (--compile; the start-up log has the reasons)", registry=r)
        self._prefix_seen = PrefixCacheStats()
        self._routed_seen: dict[int, list[int]] = {}

    def serve(self, host: str, port: int):
        """Start the /metrics HTTP endpoint; returns the server (``shutdown()`` stops it)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server

    def record_prefix_cache(self, stats: PrefixCacheStats) -> None:
        """Publish the engine's cumulative prefix-cache counts (as increments since the last call)."""
        seen = self._prefix_seen
        self.prefix_lookups.inc(stats.lookups - seen.lookups)
        self.prefix_hits.inc(stats.hits - seen.hits)
        self.prefix_reused.inc(stats.reused_tokens - seen.reused_tokens)
        self.prefix_bytes.set(stats.bytes)
        self._prefix_seen = replace(stats)

    def record_compile(self, stats: CompileStats) -> None:
        self.compiled_graphs.set(stats.compiled)
        self.compile_failures.set(len(stats.failures))

    def record_routing(self, counts: dict[int, list[int]]) -> None:
        """Publish the engine's cumulative tokens per expert (as increments since the last call)."""
        for layer, per_expert in counts.items():
            seen = self._routed_seen.get(layer, [0] * len(per_expert))
            for expert, (tokens, before) in enumerate(zip(per_expert, seen)):
                if tokens > before:
                    self.expert_tokens.labels(str(layer), str(expert)).inc(tokens - before)
            self._routed_seen[layer] = list(per_expert)

    def record_rpc(self, service: str, method: str, code: str, seconds: float) -> None:
        self.handled.labels(service, method, code).inc()
        self.handling.labels(service, method).observe(seconds)
