"""JSON Lines input shared by the CLIs: one object per line, blank lines skipped."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path


def jsonl_rows(path: Path, error: Callable[[str, str], Exception]) -> Iterator[tuple[int, dict]]:
    """(line number, parsed row) for each non-blank line; a line that is not JSON raises
    ``error("<path>:<line>", reason)``, the caller's own input error."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{number}", f"not valid JSON ({exc.msg})") from exc
