"""Typed errors: one class per status code a caller handles differently, each carrying the code
and the server's sentence (``details``)."""

from __future__ import annotations

import grpc


class FocalError(grpc.RpcError):
    """A call that failed: ``code()`` is the gRPC status, ``details()`` the server's own sentence
    (the same methods as gRPC's own errors, so ``except grpc.RpcError`` still catches it)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class InvalidArgument(FocalError):
    """The request was malformed (the sentence names the field); retrying it cannot help."""


class Unauthenticated(FocalError):
    """No bearer token, or the wrong one."""


class FailedPrecondition(FocalError):
    """The server is not set up for the call (e.g. retrieval without an index)."""


class NotFound(FocalError):
    """A namespace or document that does not exist."""


class ResourceExhausted(FocalError):
    """The server's queue was full on every attempt the retry policy allowed."""


class Unavailable(FocalError):
    """The server could not be reached, or was draining, on every attempt the retry policy allowed."""


class DeadlineExceeded(FocalError):
    """The call's deadline passed (the client's ``timeout``, or the server's estimate)."""


class Cancelled(FocalError):
    """The call was cancelled."""


_BY_CODE: dict[grpc.StatusCode, type[FocalError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def from_rpc_error(error: grpc.RpcError) -> FocalError:
    """The typed error for a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    return _BY_CODE.get(code, FocalError)(code, details or "")
