"""The one table from exceptions to gRPC status codes, shared by every handler.

Handlers raise typed exceptions; ``status_of`` maps them. Anything not in the table is a bug:
INTERNAL, logged with the request id and never with request content.
"""

from __future__ import annotations

import grpc

from compressor.compression.request import CompressionInputError
from compressor.retrieval.errors import BackendUnavailable, EmbedderMismatch, IndexInputError, NamespaceNotFound
from compressor.service.scheduler import Draining, QueueFull, WouldMissDeadline


class ServiceError(Exception):
    """An expected refusal whose status code the service chooses."""

    code = grpc.StatusCode.INTERNAL


class UnreadableRequest(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class RetrievalOff(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, field: str = "") -> None:
        prefix = f"{field}: " if field else ""
        super().__init__(f"{prefix}retrieval is off on this server: start it with --data-dir (FOCAL_DATA_DIR) "
                         "to enable the index")


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ClientCancelled(ServiceError):
    code = grpc.StatusCode.CANCELLED


_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (CompressionInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (IndexInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NamespaceNotFound, grpc.StatusCode.NOT_FOUND),
    (EmbedderMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (WouldMissDeadline, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Draining, grpc.StatusCode.UNAVAILABLE),
    (BackendUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_of(error: BaseException) -> grpc.StatusCode:
    """The status code an exception is answered with (INTERNAL for a bug)."""
    if isinstance(error, ServiceError):
        return error.code
    for kind, code in _TABLE:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL
