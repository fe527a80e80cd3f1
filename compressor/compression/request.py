"""Requests and results of a compression, with validation that names the offending field."""

from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("token", "sentence", "chunk", "digest")
DEFAULT_METHOD = "sentence"  # as many answers as token on the dev sets, and it reads as prose
REORDERS = ("original", "relevance", "edges")


class CompressionInputError(ValueError):
    """A request is malformed; ``field`` names the part at fault (the service maps it to INVALID_ARGUMENT)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass
class Chunk:
    id: str
    text: str
    score: float | None = None  # the retriever's score, if any (higher = more relevant)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class CompressOptions:
    force_tokens: list[str] = field(default_factory=list)  # words never dropped (exact match, e.g. "\n", "?")
    reorder: str = "original"  # order of kept chunks: original | relevance | edges
    instruction: str = ""  # put before the context in the prompt, never compressed
    separator: str = "\n\n"  # between kept chunks
    include_question: bool = True  # end the prompt with the question


@dataclass
class CompressRequest:
    query: str
    chunks: list[Chunk]
    rate: float | None = None  # fraction of the chunks' tokens to keep, in (0, 1]
    target_tokens: int | None = None  # or an absolute budget for the kept context (with adaptive: its ceiling)
    method: str = DEFAULT_METHOD
    adaptive: bool = False  # no rate: keep what is relevant to the query and drop the rest
    options: CompressOptions = field(default_factory=CompressOptions)
    budget_tokenizer: str = ""  # count the budget and usage in this named tokenizer's tokens ("" = the model's)

    def validate(self) -> None:
        if not isinstance(self.query, str):
            raise CompressionInputError("query", "must be a string")
        if self.method not in METHODS:
            raise CompressionInputError("method", f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.rate is not None and self.target_tokens is not None:
            raise CompressionInputError("rate", "give rate or target_tokens, not both")
        if self.adaptive:
            if self.rate is not None:
                raise CompressionInputError("rate", "the adaptive budget chooses the rate; give at most a ceiling "
                                                    "in target_tokens")
            if not self.query.strip():
                raise CompressionInputError("query", "the adaptive budget keeps what is relevant to the query, "
                                                     "so it needs one")
            if self.method in ("token", "digest"):
                raise CompressionInputError("method", "the adaptive budget works with the sentence and chunk methods")
        if self.method == "digest" and not self.query.strip():
            raise CompressionInputError("query", "a digest summarises the evidence for a question, so it needs one")
        if self.rate is not None and not 0 < self.rate <= 1:
            raise CompressionInputError("rate", f"must be in (0, 1], got {self.rate}")
        if self.target_tokens is not None and self.target_tokens < 1:
            raise CompressionInputError("target_tokens", f"must be at least 1, got {self.target_tokens}")
        if self.options.reorder not in REORDERS:
            raise CompressionInputError(
                "options.reorder", f"unknown order {self.options.reorder!r}; use one of {', '.join(REORDERS)}")
        seen: set[str] = set()
        for index, chunk in enumerate(self.chunks):
            if not isinstance(chunk.text, str):
                raise CompressionInputError(f"chunks[{index}].text", "must be a string")
            if chunk.id and chunk.id in seen:  # an empty id is allowed, and the result's position names it
                raise CompressionInputError(f"chunks[{index}].id", f"duplicate chunk id {chunk.id!r}")
            seen.add(chunk.id)


@dataclass
class ChunkResult:
    id: str
    kept_text: str
    original_tokens: int
    kept_tokens: int
    relevance: float  # the engine's mean log-probability of the question given the chunk (higher = better)
    rank: int  # 0 = most relevant
    duplicate_of: str | None = None


@dataclass
class DigestSentence:
    """One sentence of a digest, and the ids of the chunks it came from (positions for chunks sent
    without an id); empty when the model's output does not say and no chunk holds most of its words."""

    text: str
    chunk_ids: list[str] = field(default_factory=list)


@dataclass
class CompressResult:
    prompt: str
    chunks: list[ChunkResult]
    original_tokens: int  # tokens of the uncompressed context (all chunks joined by the separator)
    compressed_tokens: int  # tokens of the kept context (what the budget bounds)
    prompt_tokens: int  # tokens of the whole prompt (instruction + context + question)
    target_tokens: int
    method: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    tokenizer: str = "model"  # what every count here is in: the request's budget tokenizer, or the model's
    digest: list[DigestSentence] = field(default_factory=list)  # the digest method's sentences
    # How its decode ended: "eos", "length" (token limit), "time" (time limit), or "empty" (no evidence
    # or no budget: nothing was generated).
    digest_finish: str = ""

    @property
    def ratio(self) -> float:
        """Original over compressed context tokens (4.0 means four times fewer)."""
        return self.original_tokens / max(self.compressed_tokens, 1)
