"""What ``focal compress`` and ``focal call`` share: the same inputs (chunk files with ``--query``,
or questions in the shared data schema) and the same request flags, read into the same requests."""

from __future__ import annotations

import argparse
from pathlib import Path

from compressor.cli.jsonl import jsonl_rows
from compressor.compression.request import (
    DEFAULT_METHOD,
    METHODS,
    REORDERS,
    Chunk,
    CompressionInputError,
    CompressOptions,
    CompressRequest,
)


def read_chunks(paths: list[str]) -> tuple[list[Chunk], list[dict]]:
    """Chunks from JSONL files ({"id"?, "text", "score"?, "metadata"?} per line) or plain files
    (one chunk each); questions in the shared data schema ({"question", "chunks": [...]}) are
    returned separately."""
    chunks: list[Chunk] = []
    questions: list[dict] = []
    for path in map(Path, paths):
        if path.suffix != ".jsonl":
            chunks.append(Chunk(str(path), path.read_text(errors="replace")))
            continue
        for number, row in jsonl_rows(path, CompressionInputError):
            if "question" in row and "chunks" in row:
                questions.append(row)
            elif isinstance(row.get("text"), str):
                chunks.append(Chunk(str(row.get("id", f"{path.name}:{number}")), row["text"], row.get("score"),
                                    row.get("metadata") or {}))
            else:
                raise CompressionInputError(f"{path}:{number}", "needs a 'text' string or 'question' and 'chunks'")
    return chunks, questions


def chunk_of(index: int, raw: dict) -> Chunk:
    title = raw.get("title")
    text = f"{title}\n{raw['text']}" if title else raw["text"]
    return Chunk(str(raw.get("id", index)), text, raw.get("score"))


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    """The inputs and the request's flags."""
    parser.add_argument("inputs", nargs="+", help="JSONL of chunks or of questions (shared data schema), "
                                                   "or plain files (one chunk each)")
    parser.add_argument("--query", "-q", help="the question (required for chunk inputs)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--rate", type=float, default=None, help="fraction of the context tokens to keep (0, 1]")
    budget.add_argument("--target-tokens", type=int, default=None,
                        help="token budget for the kept context (with --adaptive: its ceiling)")
    parser.add_argument("--adaptive", action="store_true",
                        help="no fixed rate: keep what is relevant to the question and drop the rest")
    parser.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="default: %(default)s")
    parser.add_argument("--reorder", choices=REORDERS, default="original", help="default: %(default)s")
    parser.add_argument("--instruction", default="", help="text put before the context, never compressed")
    parser.add_argument("--separator", default="\\n\\n", help="between kept chunks (escapes allowed)")
    parser.add_argument("--force-token", action="append", default=[], help="a word never dropped (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON, one line per request")


def requests_of(args: argparse.Namespace, chunks_optional: bool = False) -> list[CompressRequest]:
    """The validated requests the inputs and flags describe: one per question row, or one for the
    chunk files and ``--query``. Raises ``CompressionInputError`` (or ``OSError`` for a file)."""
    options = CompressOptions(force_tokens=args.force_token, reorder=args.reorder, instruction=args.instruction,
                              separator=args.separator.encode().decode("unicode_escape"))
    chunks, questions = read_chunks(args.inputs)
    if questions and chunks:
        raise CompressionInputError("inputs", "mix chunks and questions: give one kind per call")
    if chunks and not args.query:
        raise CompressionInputError("--query", "is required when the inputs are chunks")
    if not chunks and not questions and not chunks_optional:
        raise CompressionInputError("inputs", "hold no chunks and no questions")
    requests = [CompressRequest(args.query or "", chunks, args.rate, args.target_tokens, args.method,
                                args.adaptive, options)]
    if questions:
        requests = [CompressRequest(q["question"], [chunk_of(i, c) for i, c in enumerate(q["chunks"])],
                                    args.rate, args.target_tokens, args.method, args.adaptive, options)
                    for q in questions]
    for request in requests:
        request.validate()
    return requests
