"""A small Python client for the Focal gRPC service.

    from compressor.client import FocalClient
    with FocalClient("localhost:50051") as client:
        reply = client.compress("Which river flows through Paris?",
                                [("a", "The Seine flows through Paris."), ("b", "The Danube ...")], rate=0.5)
        print(reply.prompt, reply.usage.compressed_tokens)

With a server that has an index (``--data-dir``)::

        client.upsert([("seine", "The Seine flows through Paris.", {"lang": "en"})], namespace="wiki")
        reply = client.compress("Which river flows through Paris?", [], rate=0.5, retrieve_top_k=5,
                                namespace="wiki")

Errors arrive as ``grpc.RpcError`` with the server's status code and sentence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from compressor.rpc.focal.compressor.v1 import compressor_pb2 as pb
from compressor.rpc.focal.compressor.v1 import compressor_pb2_grpc as pb_grpc

# "" leaves the choice to the server (its default method, sentence).
METHODS = {"": pb.METHOD_UNSPECIFIED, "token": pb.METHOD_TOKEN, "sentence": pb.METHOD_SENTENCE,
           "chunk": pb.METHOD_CHUNK}
REORDERS = {"original": pb.REORDER_ORIGINAL, "relevance": pb.REORDER_RELEVANCE, "edges": pb.REORDER_EDGES}


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


class FocalClient:
    def __init__(self, target: str, token: str | None = None, root_ca: str | Path | None = None,
                 client_cert: str | Path | None = None, client_key: str | Path | None = None,
                 timeout: float | None = 60.0, max_message_bytes: int = 16 * 1024 * 1024) -> None:
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        if root_ca is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(root_ca).read_bytes(),
                private_key=Path(client_key).read_bytes() if client_key else None,
                certificate_chain=Path(client_cert).read_bytes() if client_cert else None)
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.CompressorStub(self.channel)
        self.index = pb_grpc.IndexStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def compress(self, query: str, chunks: Iterable[tuple[str, str] | pb.Chunk], rate: float | None = None,
                 target_tokens: int | None = None, method: str = "", reorder: str = "original",
                 instruction: str = "", force_tokens: Iterable[str] = (), timeout: float | None = None,
                 retrieve_top_k: int = 0, namespace: str = "", filter: dict[str, str] | None = None,
                 adaptive: bool = False) -> pb.CompressResponse:
        """``method`` "" is the server's default (sentence). ``adaptive``: keep what is relevant to
        ``query`` instead of a fixed rate; ``target_tokens`` is then its ceiling."""
        if adaptive and rate is not None:
            raise ValueError("adaptive chooses the rate itself: give at most target_tokens as a ceiling")
        message = pb.CompressRequest(
            query=query, retrieve_top_k=retrieve_top_k, namespace=namespace, filter=filter or {},
            chunks=[c if isinstance(c, pb.Chunk) else pb.Chunk(id=c[0], text=c[1]) for c in chunks],
            method=METHODS[method],
            options=pb.Options(reorder=REORDERS[reorder], instruction=instruction, force_tokens=list(force_tokens)),
        )
        if adaptive:
            message.adaptive.max_tokens = target_tokens or 0
        elif rate is not None:
            message.rate = rate
        elif target_tokens is not None:
            message.target_tokens = target_tokens
        return self.stub.Compress(message, timeout=timeout or self.timeout, metadata=self.metadata)

    def upsert(self, documents: Iterable[tuple[str, str] | tuple[str, str, dict[str, str]] | pb.Document],
               namespace: str = "", timeout: float | None = None) -> pb.UpsertResponse:
        docs = [d if isinstance(d, pb.Document) else pb.Document(id=d[0], text=d[1], metadata=(d[2:] or ({},))[0])
                for d in documents]
        return self.index.Upsert(pb.UpsertRequest(namespace=namespace, documents=docs),
                                 timeout=timeout or self.timeout, metadata=self.metadata)

    def delete(self, ids: Iterable[str], namespace: str = "", timeout: float | None = None) -> pb.DeleteResponse:
        return self.index.Delete(pb.DeleteRequest(namespace=namespace, ids=list(ids)),
                                 timeout=timeout or self.timeout, metadata=self.metadata)

    def search(self, query: str, top_k: int = 10, namespace: str = "", filter: dict[str, str] | None = None,
               timeout: float | None = None) -> pb.SearchResponse:
        return self.index.Search(pb.SearchRequest(namespace=namespace, query=query, top_k=top_k, filter=filter or {}),
                                 timeout=timeout or self.timeout, metadata=self.metadata)

    def stats(self, timeout: float | None = None) -> pb.StatsResponse:
        return self.index.Stats(pb.StatsRequest(), timeout=timeout or self.timeout, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> FocalClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
