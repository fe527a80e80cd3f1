"""Conversion between the gRPC messages and the compressor's types, with the request limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from focal_client.rpc.focal.compressor.v1 import compressor_pb2 as pb
from google.protobuf.message import DecodeError, Message

from compressor.compression.request import (
    DEFAULT_METHOD,
    Chunk,
    CompressionInputError,
    CompressOptions,
    CompressRequest,
    CompressResult,
)
from compressor.service.settings import Settings

_METHODS = {pb.METHOD_UNSPECIFIED: DEFAULT_METHOD, pb.METHOD_TOKEN: "token", pb.METHOD_SENTENCE: "sentence",
            pb.METHOD_CHUNK: "chunk", pb.METHOD_DIGEST: "digest"}
_REORDERS = {pb.REORDER_UNSPECIFIED: "original", pb.REORDER_ORIGINAL: "original",
             pb.REORDER_RELEVANCE: "relevance", pb.REORDER_EDGES: "edges"}


@dataclass(frozen=True)
class Unreadable:
    """A request body that does not parse, or is too large: answered INVALID_ARGUMENT by the handler
    (grpc itself would say INTERNAL or RESOURCE_EXHAUSTED, without naming the limit)."""

    reason: str


def request_parser(message_type: type[Message], limit: int) -> Callable[[bytes], Message | Unreadable]:
    name = message_type.DESCRIPTOR.full_name

    def parse(raw: bytes) -> Message | Unreadable:
        if len(raw) > limit:
            return Unreadable(f"message: {len(raw)} bytes exceed the limit of {limit}")
        try:
            return message_type.FromString(raw)
        except DecodeError:
            return Unreadable(f"the request is not a valid {name} message")

    return parse


def to_request(message: pb.CompressRequest, limits: Settings) -> CompressRequest:
    """A validated ``CompressRequest``; ``CompressionInputError`` names the field and the limit."""
    if len(message.query) > limits.max_query_chars:
        raise CompressionInputError("query", f"{len(message.query)} characters exceed the limit of "
                                             f"{limits.max_query_chars}")
    if len(message.options.instruction) > limits.max_query_chars:
        raise CompressionInputError("options.instruction", f"{len(message.options.instruction)} characters exceed "
                                                           f"the limit of {limits.max_query_chars}")
    if len(message.chunks) > limits.max_chunks:
        raise CompressionInputError("chunks", f"{len(message.chunks)} chunks exceed the limit of {limits.max_chunks}")
    if message.retrieve_top_k > limits.max_top_k:
        raise CompressionInputError("retrieve_top_k", f"{message.retrieve_top_k} exceeds the limit of "
                                                      f"{limits.max_top_k}")
    if len(message.chunks) + message.retrieve_top_k > limits.max_chunks:
        raise CompressionInputError("retrieve_top_k", f"{len(message.chunks)} chunks plus {message.retrieve_top_k} "
                                                      f"retrieved exceed the limit of {limits.max_chunks} chunks")
    for index, chunk in enumerate(message.chunks):
        if len(chunk.text) > limits.max_chunk_chars:
            raise CompressionInputError(f"chunks[{index}].text", f"{len(chunk.text)} characters exceed the limit of "
                                                                 f"{limits.max_chunk_chars}")
    if len(message.options.separator) > limits.max_separator_chars:
        raise CompressionInputError("options.separator", f"{len(message.options.separator)} characters exceed the "
                                                         f"limit of {limits.max_separator_chars}")
    if message.method not in _METHODS:
        raise CompressionInputError("method", f"unknown method {message.method}")
    if message.options.reorder not in _REORDERS:
        raise CompressionInputError("options.reorder", f"unknown order {message.options.reorder}")
    budget = message.WhichOneof("budget")
    options = message.options
    request = CompressRequest(
        query=message.query,
        chunks=[Chunk(c.id, c.text, c.score if c.HasField("score") else None, dict(c.metadata))
                for c in message.chunks],
        rate=message.rate if budget == "rate" else None,
        target_tokens=(message.target_tokens if budget == "target_tokens" else
                       message.adaptive.max_tokens or None if budget == "adaptive" else None),
        method=_METHODS[message.method],
        adaptive=budget == "adaptive",
        options=CompressOptions(
            force_tokens=list(options.force_tokens),
            reorder=_REORDERS[options.reorder],
            instruction=options.instruction,
            separator=options.separator if options.HasField("separator") else "\n\n",
            include_question=options.include_question if options.HasField("include_question") else True,
        ),
        budget_tokenizer=message.budget_tokenizer,
    )
    request.validate()
    return request


def to_response(result: CompressResult, request_id: str, model: str, queue_seconds: float) -> pb.CompressResponse:
    timings = {f"{name}": seconds * 1000 for name, seconds in result.timings.items()}
    timings["queue"] = queue_seconds * 1000
    return pb.CompressResponse(
        prompt=result.prompt,
        chunks=[pb.ChunkResult(id=c.id, kept_text=c.kept_text, original_tokens=c.original_tokens,
                               kept_tokens=c.kept_tokens, relevance=c.relevance, rank=c.rank,
                               duplicate_of=c.duplicate_of or "") for c in result.chunks],
        usage=pb.Usage(tokenizer=result.tokenizer, original_tokens=result.original_tokens,
                       compressed_tokens=result.compressed_tokens, prompt_tokens=result.prompt_tokens,
                       target_tokens=result.target_tokens, ratio=result.ratio),
        timings_ms=timings,
        request_id=request_id,
        model=model,
        digest=[pb.DigestSentence(text=s.text, chunk_ids=s.chunk_ids) for s in result.digest],
        digest_finish=result.digest_finish,
    )
