"""Reading chunks and questions from files, for ``focal compress`` and ``focal call``."""

from __future__ import annotations

from pathlib import Path

from compressor.cli.jsonl import jsonl_rows
from compressor.compression.request import Chunk, CompressionInputError


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
