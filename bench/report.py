"""Shared output of every benchmark: a markdown table, a JSON file, a PNG, and one JSON line last."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def progress(message: str) -> None:
    """Progress goes to stderr so that stdout stays the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def best_of(repeats: int, run: Callable[[], None]) -> float:
    """Fastest wall time of ``repeats`` runs (the least disturbed by a noisy machine)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write(name: str, payload: dict, markdown: str) -> None:
    """Write results/NAME.json and results/NAME.md, print the markdown, then the JSON on the last line."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown + "\n")
    print(markdown)
    print(json.dumps(payload))
