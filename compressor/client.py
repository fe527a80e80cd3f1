"""The Python client, as the service's own commands and tests use it: the light client distribution
``focal-rag-client`` (clients/python, no torch; sync and asyncio, retries, typed errors), plus a
health probe for starting servers.

    from compressor.client import FocalClient      # the same class as focal_client.FocalClient
    with FocalClient("localhost:50051") as client:
        reply = client.compress("Which river flows through Paris?",
                                [("a", "The Seine flows through Paris."), ("b", "The Danube ...")], rate=0.5)
        print(reply.prompt, reply.usage.compressed_tokens)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from focal_client import AsyncFocalClient, FocalClient, FocalError, RetryPolicy
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["AsyncFocalClient", "FocalClient", "FocalError", "RetryPolicy", "wait_until_serving"]


def wait_until_serving(target: str, timeout: float = 120.0, service: str = "",
                       alive: Callable[[], bool] = lambda: True) -> float:
    """Poll ``grpc.health.v1`` at ``target`` (plaintext) until ``service`` reports SERVING; returns
    the seconds waited. Raises ``TimeoutError`` after ``timeout`` seconds, and ``RuntimeError`` as
    soon as ``alive()`` turns false (a server process that exited will never answer)."""
    started = time.monotonic()
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if not alive():
                raise RuntimeError(f"the server at {target} exited before it was serving")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - started
            except grpc.RpcError:
                pass
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"the server at {target} was not serving after {timeout:.0f} s")
            time.sleep(0.2)
