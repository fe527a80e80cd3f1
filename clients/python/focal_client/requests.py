"""Building request messages from Python values, shared by the sync and the asyncio client: one
place that knows the contract's fields and turns a typo into a ValueError that lists the choices."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from focal_client.rpc.focal.compressor.v1 import compressor_pb2 as pb

# "" leaves the choice to the server (its default method, sentence).
METHODS = {"": pb.METHOD_UNSPECIFIED, "token": pb.METHOD_TOKEN, "sentence": pb.METHOD_SENTENCE,
           "chunk": pb.METHOD_CHUNK, "digest": pb.METHOD_DIGEST}
REORDERS = {"original": pb.REORDER_ORIGINAL, "relevance": pb.REORDER_RELEVANCE, "edges": pb.REORDER_EDGES}

ChunkLike = tuple[str, str] | tuple[str, str, float] | pb.Chunk
DocumentLike = tuple[str, str] | tuple[str, str, Mapping[str, str]] | pb.Document


def choice(kind: str, value: str, choices: Mapping[str, int]) -> int:
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"unknown {kind} {value!r}; choose one of {listed}")
    return choices[value]


def chunk(value: ChunkLike) -> pb.Chunk:
    """``(id, text)``, ``(id, text, retriever score)`` or a ``Chunk``."""
    if isinstance(value, pb.Chunk):
        return value
    if not isinstance(value, tuple) or len(value) not in (2, 3):
        raise ValueError(f"a chunk is (id, text), (id, text, score) or a Chunk, not {value!r}")
    message = pb.Chunk(id=value[0], text=value[1])
    if len(value) == 3:
        message.score = value[2]
    return message


def compress_request(query: str, chunks: Iterable[ChunkLike], *, rate: float | None, target_tokens: int | None,
                     adaptive: bool, method: str, reorder: str, instruction: str, force_tokens: Iterable[str],
                     include_question: bool | None, separator: str | None, retrieve_top_k: int, namespace: str,
                     filter: Mapping[str, str] | None, budget_tokenizer: str = "") -> pb.CompressRequest:
    """Every field of ``CompressRequest``. One budget at most: ``rate``, ``target_tokens``, or
    ``adaptive`` (with ``target_tokens`` as its ceiling); none keeps everything."""
    if rate is not None and target_tokens is not None and not adaptive:
        raise ValueError("give rate or target_tokens, not both")
    if adaptive and rate is not None:
        raise ValueError("adaptive chooses the rate itself: give at most target_tokens as a ceiling")
    options = pb.Options(reorder=choice("reorder", reorder, REORDERS), instruction=instruction,
                         force_tokens=list(force_tokens))
    if separator is not None:  # unset: the server's default ("\n\n")
        options.separator = separator
    if include_question is not None:  # unset: the server's default (true)
        options.include_question = include_question
    message = pb.CompressRequest(query=query, chunks=[chunk(c) for c in chunks],
                                 method=choice("method", method, METHODS), options=options,
                                 retrieve_top_k=retrieve_top_k, namespace=namespace, filter=dict(filter or {}),
                                 budget_tokenizer=budget_tokenizer)
    if adaptive:
        message.adaptive.max_tokens = target_tokens or 0
    elif rate is not None:
        message.rate = rate
    elif target_tokens is not None:
        message.target_tokens = target_tokens
    return message


def documents(values: Iterable[DocumentLike]) -> list[pb.Document]:
    """``(id, text)``, ``(id, text, metadata)`` or ``Document`` values."""
    out = []
    for value in values:
        if isinstance(value, pb.Document):
            out.append(value)
        elif isinstance(value, tuple) and len(value) in (2, 3):
            out.append(pb.Document(id=value[0], text=value[1], metadata=dict(value[2]) if len(value) == 3 else {}))
        else:
            raise ValueError(f"a document is (id, text), (id, text, metadata) or a Document, not {value!r}")
    return out
