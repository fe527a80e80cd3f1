"""The synchronous client."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc

from focal_client import channel, lingua, requests
from focal_client.errors import from_rpc_error
from focal_client.rpc.focal.compressor.v1 import compressor_pb2 as pb
from focal_client.rpc.focal.compressor.v1 import compressor_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT_S = 60.0


class FocalClient:
    """Calls a Focal server. Every call has a deadline (``timeout`` seconds, per call or the
    client's default); RESOURCE_EXHAUSTED and UNAVAILABLE are retried by gRPC per ``retry``;
    failures raise ``focal_client.errors.FocalError`` subclasses.

    TLS: ``root_ca`` (the CA of the server's certificate); mTLS: also ``client_cert`` and
    ``client_key``; ``token``: the bearer token of a server started with ``--auth-token-file``."""

    def __init__(self, target: str, token: str | None = None, root_ca: str | Path | None = None,
                 client_cert: str | Path | None = None, client_key: str | Path | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT_S, max_message_bytes: int = 16 * 1024 * 1024,
                 retry: channel.RetryPolicy = channel.DEFAULT_RETRIES) -> None:
        self.channel = channel.open_channel(grpc, target, root_ca, client_cert, client_key, max_message_bytes,
                                            retry)
        self.stub = pb_grpc.CompressorStub(self.channel)
        self.index = pb_grpc.IndexStub(self.channel)
        self.metadata = channel.metadata(token)
        self.timeout = timeout

    def _call(self, method, request, timeout: float | None):
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def compress(self, query: str, chunks: Iterable[requests.ChunkLike] = (), rate: float | None = None,
                 target_tokens: int | None = None, method: str = "", reorder: str = "original",
                 instruction: str = "", force_tokens: Iterable[str] = (), timeout: float | None = None,
                 retrieve_top_k: int = 0, namespace: str = "", filter: Mapping[str, str] | None = None,
                 adaptive: bool = False, include_question: bool | None = None,
                 separator: str | None = None, budget_tokenizer: str = "") -> pb.CompressResponse:
        """``chunks``: ``(id, text)``, ``(id, text, retriever score)`` or ``Chunk``. Budget: ``rate``
        (fraction kept), ``target_tokens``, or ``adaptive`` (keep what is relevant; ``target_tokens``
        is then its ceiling); none keeps everything. ``method`` "" is the server's default
        (sentence); ``include_question``/``separator`` ``None`` are the server's defaults.
        ``budget_tokenizer``: count the budget and ``usage`` in the tokens of this tokenizer (a name
        the server loads, e.g. your downstream model's); "" = the server model's tokens."""
        request = requests.compress_request(
            query, chunks, rate=rate, target_tokens=target_tokens, adaptive=adaptive, method=method,
            reorder=reorder, instruction=instruction, force_tokens=force_tokens, include_question=include_question,
            separator=separator, retrieve_top_k=retrieve_top_k, namespace=namespace, filter=filter,
            budget_tokenizer=budget_tokenizer)
        return self._call(self.stub.Compress, request, timeout)

    def upsert(self, documents: Iterable[requests.DocumentLike], namespace: str = "",
               timeout: float | None = None) -> pb.UpsertResponse:
        request = pb.UpsertRequest(namespace=namespace, documents=requests.documents(documents))
        return self._call(self.index.Upsert, request, timeout)

    def delete(self, ids: Iterable[str], namespace: str = "", timeout: float | None = None) -> pb.DeleteResponse:
        return self._call(self.index.Delete, pb.DeleteRequest(namespace=namespace, ids=list(ids)), timeout)

    def search(self, query: str, top_k: int = 10, namespace: str = "", filter: Mapping[str, str] | None = None,
               timeout: float | None = None) -> pb.SearchResponse:
        request = pb.SearchRequest(namespace=namespace, query=query, top_k=top_k, filter=dict(filter or {}))
        return self._call(self.index.Search, request, timeout)

    def stats(self, timeout: float | None = None) -> pb.StatsResponse:
        return self._call(self.index.Stats, pb.StatsRequest(), timeout)

    def compress_prompt(self, context: Iterable[str] | str, instruction: str = "", question: str = "",
                        rate: float = 0.5, target_token: float = -1, force_tokens: Iterable[str] = (),
                        reorder_context: str = "original", concate_question: bool = True,
                        price_per_1k_tokens: float = 0.06, timeout: float | None = None,
                        **llmlingua_options: object) -> dict[str, object]:
        """LLMLingua's ``compress_prompt``, served by Focal (``focal_client.lingua`` maps the parameters)."""
        arguments = lingua.request_arguments(context, question, instruction, rate, target_token, force_tokens,
                                             reorder_context, concate_question, llmlingua_options)
        return lingua.lingua_result(self.compress(**arguments, timeout=timeout), price_per_1k_tokens)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> FocalClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
