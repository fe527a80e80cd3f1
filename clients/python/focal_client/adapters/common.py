"""What every adapter does the same way: the request it sends for a list of documents, and which
documents come back with which text and metadata.

Chunk ids are the documents' positions (always unique), so results map back to the caller's own
objects whatever their ids. A document Focal dropped (``kept_tokens == 0``, duplicates included:
Focal keeps a repeated chunk once, at its first occurrence) is left out; the rest come back most
relevant first, with the caller's metadata plus ``focal_rank``, ``focal_relevance``,
``focal_kept_tokens`` and ``focal_original_tokens``. ``output="prompt"`` returns one document instead:
the assembled prompt, with the usage in its metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from focal_client.aio import AsyncFocalClient
from focal_client.client import FocalClient
from focal_client.rpc.focal.compressor.v1 import compressor_pb2 as pb

OUTPUTS = ("documents", "prompt")
METADATA_KEYS = ("focal_rank", "focal_relevance", "focal_kept_tokens", "focal_original_tokens")


@dataclass
class FocalSettings:
    """Where the server is and what to ask of it. Budget: ``rate``, ``target_tokens``, or
    ``adaptive`` (``target_tokens`` is then its ceiling); the default is ``rate=0.5``. The question
    is left out of the prompt by default (frameworks put it in their own template)."""

    target: str = "localhost:50051"
    token: str | None = None
    root_ca: str | Path | None = None
    client_cert: str | Path | None = None
    client_key: str | Path | None = None
    timeout: float = 60.0
    rate: float | None = None
    target_tokens: int | None = None
    adaptive: bool = False
    method: str = ""
    reorder: str = "original"
    instruction: str = ""
    include_question: bool = False
    force_tokens: list[str] = field(default_factory=list)
    output: str = "documents"
    budget_tokenizer: str = ""  # count the budget in this tokenizer's tokens (a name the server loads)

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown output {self.output!r}; choose one of {', '.join(map(repr, OUTPUTS))}")
        if self.method == "digest" and self.output == "documents":
            raise ValueError("the digest method writes new text that belongs to no single document: "
                             "use output='prompt'")

    def client(self) -> FocalClient:
        return FocalClient(self.target, token=self.token, root_ca=self.root_ca, client_cert=self.client_cert,
                           client_key=self.client_key, timeout=self.timeout)

    def async_client(self) -> AsyncFocalClient:
        """A client for the running event loop (a ``grpc.aio`` channel belongs to one loop)."""
        return AsyncFocalClient(self.target, token=self.token, root_ca=self.root_ca, client_cert=self.client_cert,
                                client_key=self.client_key, timeout=self.timeout)

    def arguments(self, query: str, texts: Sequence[str]) -> dict:
        budget = ({"rate": self.rate} if self.rate is not None else {}) | (
            {"target_tokens": self.target_tokens} if self.target_tokens is not None else {})
        if not budget and not self.adaptive:
            budget = {"rate": 0.5}
        return {"query": query, "chunks": [(str(i), text) for i, text in enumerate(texts)], "method": self.method,
                "reorder": self.reorder, "instruction": self.instruction, "include_question": self.include_question,
                "force_tokens": self.force_tokens, "adaptive": self.adaptive,
                "budget_tokenizer": self.budget_tokenizer, **budget}


@dataclass(frozen=True)
class Kept:
    """One document that survived: its position in the caller's list, its kept text and metadata."""

    index: int
    text: str
    metadata: dict[str, object]
    relevance: float


def kept(reply: pb.CompressResponse) -> list[Kept]:
    """The documents Focal kept, most relevant first."""
    survivors = [(i, r) for i, r in enumerate(reply.chunks) if r.kept_tokens > 0]
    survivors.sort(key=lambda item: item[1].rank)
    return [Kept(i, r.kept_text, {"focal_rank": r.rank, "focal_relevance": r.relevance,
                                  "focal_kept_tokens": r.kept_tokens, "focal_original_tokens": r.original_tokens},
                 r.relevance) for i, r in survivors]


def usage(reply: pb.CompressResponse) -> dict[str, object]:
    """Metadata of the prompt document."""
    return {"focal_original_tokens": reply.usage.original_tokens,
            "focal_compressed_tokens": reply.usage.compressed_tokens,
            "focal_prompt_tokens": reply.usage.prompt_tokens, "focal_ratio": reply.usage.ratio,
            "focal_request_id": reply.request_id}
