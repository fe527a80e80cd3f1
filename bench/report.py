"""Shared output of every benchmark: a markdown table, a JSON file, a PNG, and one JSON line last."""

from __future__ import annotations

import json
import os
import platform
import subprocess
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


def provenance(settings: dict) -> dict:
    """What produced a results file: the commit (and whether the tree had uncommitted changes), when,
    on what machine, and the benchmark's own settings."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else "unknown"

    import torch

    # Results files the run itself is writing do not count as changes to what produced them.
    changes = git("status", "--porcelain", "--", ":(top)", ":(top,exclude)bench/results")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes": bool(changes),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.processor() or
            platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__, "settings": settings}


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
