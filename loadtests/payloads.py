"""Realistic payloads: questions and their retrieved passages from the shared data sets (NQ
multi-document QA and stdlib code), or the repository's sample request where those are absent."""

from __future__ import annotations

import random
import sys
from pathlib import Path

from devtools.data import SAMPLE_REQUEST, SHARED_DATA, chunk_text, passage_id, read_rows


def data_files(shared: Path = SHARED_DATA) -> list[Path]:
    """The shared data sets; without them, the repository's one sample request, said loudly (a load
    test of one question measures the prefix cache, not the service)."""
    files = sorted(shared.glob("*.jsonl"))
    if not files:
        print(f"WARNING: no shared data sets in {shared}: every payload comes from the single sample request "
              f"{SAMPLE_REQUEST.name}, which flatters the latency (one question, cached prefixes)", file=sys.stderr)
    return files or [SAMPLE_REQUEST]


def load_rows(paths: list[Path] | None = None) -> list[dict]:
    """Rows of ``{"question", "chunks": [{"title"?, "text"}]}``."""
    return [row for path in paths or data_files() for row in read_rows(path)]


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
