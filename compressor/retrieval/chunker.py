"""Cut documents into retrieval chunks that respect sentences and code blocks.

A document is split into blocks first: fenced code (```), then paragraphs (blank lines). A
prose block is cut in sentences, a code block (fenced, or a paragraph that looks like code) in
lines. Units are packed greedily into chunks of at most ``max_chars``; a code block that fits a
chunk is never split across two, and a sentence or line longer than a chunk is cut at word
boundaries. ``overlap`` repeats the last units of a chunk at the start of the next one.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from compressor.text.segment import lines, looks_like_code, sentences

_FENCE_MARKS = ("```", "~~~")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class Chunking:
    max_chars: int = 1000  # all-MiniLM-L6-v2 reads 256 word pieces, about 1000 characters of English
    overlap: int = 0  # units (sentences or lines) repeated from the end of the previous chunk

    def __post_init__(self) -> None:
        if self.max_chars < 16:
            raise ValueError(f"chunk max_chars must be at least 16, got {self.max_chars}")
        if self.overlap < 0:
            raise ValueError(f"chunk overlap must be >= 0, got {self.overlap}")


def fences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each fenced code block: a line opening with ``` or ~~~ (an info string may
    follow) up to the next line that holds only the same mark (and spaces). One pass over the
    lines: every opening looks its closing line up in a sorted list instead of scanning ahead, so
    a text of unclosed fences costs n log n, not n squared as a lazy regular expression would."""
    rows = text.split("\n")
    starts, offset = [], 0
    for row in rows:
        starts.append(offset)
        offset += len(row) + 1
    closers = {mark: [i for i, row in enumerate(rows) if row.rstrip(" \t") == mark] for mark in _FENCE_MARKS}
    spans, index = [], 0
    while index < len(rows) - 1:  # an opening line needs a line after it
        mark = rows[index][:3]
        if mark in closers:
            found = bisect.bisect_right(closers[mark], index)
            if found < len(closers[mark]):
                close = closers[mark][found]
                spans.append((starts[index], starts[close] + len(rows[close])))
                index = close + 1
                continue
        index += 1
    return spans


@dataclass(frozen=True)
class _Piece:
    text: str  # with the whitespace that separates it from the unit before (kept when joined)
    code: bool
    block: int  # index of the paragraph or code block the unit belongs to


def _pieces(text: str) -> list[_Piece]:
    """Sentences of prose and lines of code, in order; each block's first unit starts with a blank line."""
    units: list[_Piece] = []

    def block(part: str, code: bool, spans) -> None:
        pieces = [s.text(part) for s in spans]
        if pieces:
            pieces[0] = "\n\n" + pieces[0].lstrip("\n" if code else None)
            number = units[-1].block + 1 if units else 0
            units.extend(_Piece(piece, code, number) for piece in pieces)

    def prose(part: str) -> None:
        for paragraph in _PARAGRAPH_BREAK.split(part):
            if paragraph.strip():
                code = looks_like_code(paragraph)
                block(paragraph, code, lines(paragraph) if code else sentences(paragraph))

    start = 0
    for fence_start, fence_end in fences(text):
        prose(text[start:fence_start])
        fenced = text[fence_start:fence_end]
        block(fenced, True, lines(fenced))
        start = fence_end
    prose(text[start:])
    return units


def _hard_split(unit: _Piece, limit: int) -> list[_Piece]:
    """A unit longer than a chunk, cut at the last space before the limit (or at the limit)."""
    pieces, rest = [], unit.text
    while len(rest.strip()) > limit:
        lead = len(rest) - len(rest.lstrip())
        cut = rest.rfind(" ", lead, lead + limit)
        cut = cut if cut > lead + limit // 2 else lead + limit
        pieces.append(_Piece(rest[:cut], unit.code, unit.block))
        rest = " " + rest[cut:].lstrip(" ")
    return [*pieces, _Piece(rest, unit.code, unit.block)] if rest.strip() else pieces


def _render(units: list[_Piece]) -> str:
    text = "".join(u.text for u in units).lstrip("\n")
    return text.rstrip() if units[0].code else text.strip()


def chunk_text(text: str, chunking: Chunking = Chunking()) -> list[str]:
    """The chunks of ``text`` in order; empty for blank text."""
    limit = chunking.max_chars
    chunks: list[str] = []
    current: list[_Piece] = []
    fresh = 0  # units of ``current`` not yet in any chunk (the rest is overlap)

    def size(units: list[_Piece]) -> int:
        return len(_render(units)) if units else 0

    def flush() -> None:
        nonlocal current, fresh
        if fresh:
            chunks.append(_render(current))
            kept = current[len(current) - chunking.overlap:] if chunking.overlap else []
            current = kept if size(kept) <= limit // 2 else []
            fresh = 0

    units = _pieces(text)
    blocks: dict[int, list[_Piece]] = {}
    for unit in units:
        blocks.setdefault(unit.block, []).append(unit)
    for unit in units:
        block = blocks[unit.block]
        if unit.code and unit is block[0] and current and size(block) <= limit < size([*current, *block]):
            flush()  # a code block that fits a chunk stays in one chunk
        for piece in _hard_split(unit, limit):
            if current and size([*current, piece]) > limit:
                flush()
            current.append(piece)
            fresh += 1
    flush()
    return [c for c in chunks if c.strip()]
