"""Bearer-token authentication of the application services (health and reflection stay open).

A call is let through only with exactly one ``authorization: Bearer <token>`` header holding the
token: none, a wrong one, or more than one (which could smuggle a second value past a proxy that
checks the first) is UNAUTHENTICATED. Every refusal is counted and logged with its reason and
method, never with the value presented.
"""

from __future__ import annotations

import hmac

import grpc

from compressor.service.logs import log
from compressor.service.metrics import Metrics


class BearerAuth(grpc.ServerInterceptor):
    """Requires the bearer ``token`` on every method of ``services``."""

    def __init__(self, token: str, services: tuple[str, ...], metrics: Metrics) -> None:
        self.expected = f"Bearer {token}".encode()
        self.prefixes = tuple(f"/{service}/" for service in services)
        self.metrics = metrics

    def _refuse(self, reason: str, method: str) -> grpc.RpcMethodHandler:
        self.metrics.auth_failures.labels(reason).inc()
        log.warning("unauthenticated", extra={"fields": {"reason": reason, "method": method}})
        service, _, rpc = method.strip("/").rpartition("/")

        def deny(_request, context):
            self.metrics.record_rpc(service, rpc, grpc.StatusCode.UNAUTHENTICATED.name, 0.0)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, {
                "missing": "missing bearer token (authorization: Bearer <token>)",
                "wrong": "wrong bearer token",
                "repeated": "more than one authorization header; send exactly one",
            }[reason])

        return grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, details):
        if not details.method.startswith(self.prefixes):
            return continuation(details)
        given = [value for key, value in details.invocation_metadata or () if key == "authorization"]
        if not given:
            return self._refuse("missing", details.method)
        if len(given) > 1:
            return self._refuse("repeated", details.method)
        presented = given[0].encode() if isinstance(given[0], str) else given[0]
        if not hmac.compare_digest(presented, self.expected):
            return self._refuse("wrong", details.method)
        return continuation(details)
