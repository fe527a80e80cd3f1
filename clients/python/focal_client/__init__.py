"""Client of the Focal context-compression service (gRPC; no ML stack).

    from focal_client import FocalClient
    with FocalClient("localhost:50051") as client:
        reply = client.compress("Which river flows through Paris?",
                                [("a", "The Seine flows through Paris."), ("b", "The Danube ...")], rate=0.5)
        print(reply.prompt, reply.usage.compressed_tokens)

``AsyncFocalClient`` is the same for asyncio; ``compress_prompt`` takes LLMLingua's arguments.
"""

from focal_client.aio import AsyncFocalClient
from focal_client.channel import NO_RETRIES, RetryPolicy
from focal_client.client import FocalClient
from focal_client.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FocalError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from focal_client.requests import METHODS, REORDERS
from focal_client.rpc.focal.compressor.v1 import compressor_pb2 as pb

__all__ = ["METHODS", "NO_RETRIES", "REORDERS", "AsyncFocalClient", "Cancelled", "DeadlineExceeded",
           "FailedPrecondition", "FocalClient", "FocalError", "InvalidArgument", "NotFound", "ResourceExhausted",
           "RetryPolicy", "Unauthenticated", "Unavailable", "pb"]
