"""What every unary handler of the service shares: a request id, exceptions answered through the
one status table (``status``), a JSON log line and the per-RPC metrics of each call."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from compressor.service.logs import log
from compressor.service.metrics import Metrics
from compressor.service.protocol import Unreadable
from compressor.service.status import UnreadableRequest, status_of

# The work of one RPC: (request message, context, log fields to add to) -> response message.
Work = Callable[[Message, grpc.ServicerContext, dict[str, Any]], Message]
# Called once per call with its status code and seconds, for a service's own metrics.
Record = Callable[[grpc.StatusCode, float], None]


def unary(service: str, rpc: str, work: Work, metrics: Metrics,
          record: Record | None = None) -> Callable[[Message | Unreadable, grpc.ServicerContext], Message]:
    def handler(message: Message | Unreadable, context: grpc.ServicerContext) -> Message:
        request_id = uuid.uuid4().hex[:16]
        started = time.monotonic()
        fields: dict[str, Any] = {"request_id": request_id}
        code = grpc.StatusCode.OK
        try:
            if isinstance(message, Unreadable):
                raise UnreadableRequest(message.reason)
            return work(message, context, fields)
        except Exception as error:
            code = status_of(error)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("internal error", extra={"fields": {**fields, "rpc": rpc}})
                context.abort(code, f"internal error (request id {request_id})")
            context.abort(code, str(error))
        finally:
            seconds = time.monotonic() - started
            metrics.record_rpc(service, rpc, code.name, seconds)
            if record is not None:
                record(code, seconds)
            fields.update(code=code.name, ms=round(seconds * 1000, 1))
            log.info(rpc.lower(), extra={"fields": fields})

    return handler
