"""Realistic payloads: questions and their retrieved passages from the shared data sets (NQ
multi-document QA and stdlib code), or the repository's sample request where those are absent."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
FALLBACK = ROOT / "examples" / "sample_request.jsonl"


def data_files() -> list[Path]:
    shared = sorted(SHARED.glob("*.jsonl"))
    return shared or [FALLBACK]


def load_rows(paths: list[Path] | None = None) -> list[dict]:
    """Rows of ``{"question", "chunks": [{"title"?, "text"}]}``."""
    rows = []
    for path in paths or data_files():
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def chunk_text(chunk: dict) -> str:
    return f"{chunk['title']}\n{chunk['text']}" if chunk.get("title") else chunk["text"]


def passage_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def passages(rows: list[dict], limit: int) -> list[tuple[str, str]]:
    """Distinct passages (id, text), in a stable order."""
    seen: dict[str, str] = {}
    for row in rows:
        for chunk in row["chunks"]:
            text = chunk_text(chunk)
            seen.setdefault(passage_id(text), text)
    return list(seen.items())[:limit]


def retrieved(row: dict, rng: random.Random) -> list[tuple[str, str]]:
    """What a retriever hands over: 5 to 10 passages of the question, the gold one among them."""
    chunks = row["chunks"]
    gold = [c for c in chunks if c.get("is_gold")]
    others = [c for c in chunks if not c.get("is_gold")]
    picked = gold + rng.sample(others, min(len(others), rng.randint(5, 10) - len(gold)))
    rng.shuffle(picked)
    return [(f"c{i}", chunk_text(c)) for i, c in enumerate(picked)]
