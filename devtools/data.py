"""The shared evaluation data (``../shared/data`` beside the checkout) and stable passage ids."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
NQ_DEV = SHARED_DATA / "nq_multidoc_dev.jsonl"
CODE_DEV = SHARED_DATA / "code_stdlib_dev.jsonl"
SAMPLE_REQUEST = ROOT / "examples" / "sample_request.jsonl"


def read_rows(path: Path) -> list[dict]:
    """One JSON object per non-blank line."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def chunk_text(chunk: dict) -> str:
    """A data-set chunk as a passage: its title (when it has one) on the first line, then its text."""
    return f"{chunk['title']}\n{chunk['text']}" if chunk.get("title") else chunk["text"]


def passage_id(text: str) -> str:
    """A stable id for a passage's text: the same passage gets the same id wherever it appears."""
    return hashlib.sha1(text.encode()).hexdigest()[:16]
