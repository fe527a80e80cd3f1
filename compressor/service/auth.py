"""Bearer-token authentication of the application services (health and reflection stay open)."""

from __future__ import annotations

import hmac

import grpc


class BearerAuth(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every method of ``services``."""

    def __init__(self, token: str, services: tuple[str, ...]) -> None:
        self.expected = f"Bearer {token}".encode()
        self.prefixes = tuple(f"/{service}/" for service in services)

        def deny(_request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self.denied = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, details):
        if not details.method.startswith(self.prefixes):
            return continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode(), self.expected):
            return continuation(details)
        return self.denied
