"""Cut text into the units compression keeps or drops: words, sentences, code lines.

A unit carries the whitespace before it, so the kept units joined in order are valid text.
Numbers, URLs, e-mail addresses and code identifiers (dotted, ``::`` or ``->`` paths, a call's
``()``) are single units: they are kept whole or not at all.

Every scan here is linear in the text: a pattern that could try a long run again from each of its
positions (an e-mail's local part, a signature's type list) is bounded in length, so a hostile
input of a million characters costs what an ordinary one does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNIT = re.compile(
    r"""\s*(?:
        (?:https?|ftp)://\S+[^\s.,;:!?)\]'"]        # URL (trailing punctuation stays outside)
      | [\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}   # e-mail address (RFC 5321 lengths)
      | [-+]?\d[\d,.:/_-]*\d%?|\d%?                 # number, date, time, version
      | \w+(?:['’-]\w+)+                            # hyphenated word, contraction
      | [A-Za-z_]\w*(?:(?:\.|::|->)[A-Za-z_]\w*)*(?:\(\))?   # identifier or dotted path
      | \w+                                         # any other word (any script)
      | \S                                          # one punctuation mark
    )""",
    re.VERBOSE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])[\"')\]]*\s+|\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)])\s)")
_CODE_LINE = re.compile(
    r"""^\s*(?:def|class|async\s+def|return|import|from\s+\S+\s+import|if|elif|else|for|while|try|except|with|
        function|const|let|var|public|private|protected|static|func|fn|package|\#include|@\w+)\b
      | [;{}]\s*$ | ^\s{4,}\S | ^\s*(?://|\#)\s | =\s*[\w\[{(\"']""",
    re.VERBOSE,
)
_SIGNATURE = re.compile(
    r"^\s*(?:@\w|(?:async\s+)?def\s|class\s|function\s|func\s|fn\s|(?:public|private|protected|static)\b.*\(|"
    r"\w[\w<>\[\],\s*&]*\s+\**\w+\s*\([^;]*\)\s*\{?\s*$)"
)


@dataclass(frozen=True)
class Span:
    start: int
    end: int

    def text(self, source: str) -> str:
        return source[self.start : self.end]


def words(text: str) -> list[Span]:
    """Word-level units (with their leading whitespace)."""
    return [Span(m.start(), m.end()) for m in _UNIT.finditer(text)]


def sentences(text: str) -> list[Span]:
    """Sentence-level units for prose (with their leading whitespace)."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if match.start() > start:
            spans.append(Span(start, match.start()))
        start = match.start()
    if start < len(text) and text[start:].strip():
        spans.append(Span(start, len(text)))
    return _without_blank(text, spans)


def lines(text: str) -> list[Span]:
    """Line-level units for code (each with its preceding newline, so indentation survives)."""
    spans, start = [], 0
    for match in re.finditer(r"\n", text):
        spans.append(Span(start, match.start()))
        start = match.start()
    spans.append(Span(start, len(text)))
    return _without_blank(text, spans)


def _without_blank(text: str, spans: list[Span]) -> list[Span]:
    return [s for s in spans if s.text(text).strip()]


def looks_like_code(text: str) -> bool:
    """Source code rather than prose: most lines look like statements, or the text is indented blocks."""
    rows = [row for row in text.splitlines() if row.strip()]
    if len(rows) < 2:
        return bool(rows) and is_signature(rows[0]) and rows[0].rstrip().endswith((":", "{"))
    hits = sum(bool(_CODE_LINE.search(row)) for row in rows)
    return hits / len(rows) >= 0.4


# Longer lines are not taken for signatures: the pattern backtracks over a line's words, so its cost
# must not grow with a hostile line's length.
_SIGNATURE_MAX_CHARS = 500


def is_signature(line: str) -> bool:
    """A function/class header or decorator: kept whenever its chunk is kept."""
    line = line.lstrip("\n")
    return len(line) <= _SIGNATURE_MAX_CHARS and bool(_SIGNATURE.match(line))


_HEADER_LINES = 12  # a code chunk's header is looked for in its first lines only
_CONTINUATION_LINES = 4  # a signature may wrap over this many further lines


def code_header(text: str) -> Span | None:
    """The chunk's opening through its first function or class signature (decorators, a file path
    line and a wrapped parameter list included): what the chunk defines. None when no signature
    starts within its first lines."""
    units = lines(text)[:_HEADER_LINES]
    for position, span in enumerate(units):
        line = span.text(text).lstrip("\n")
        if not is_signature(line) or line.lstrip().startswith("@"):
            continue
        for end in units[position : position + 1 + _CONTINUATION_LINES]:
            if end.text(text).rstrip().endswith((":", "{")):
                return Span(0, end.end)
        return Span(0, span.end)
    return None
