"""Every text scan is linear: hostile inputs at the limits (a 1,000,000-character document, a
100,000-character chunk) take about what ordinary text of that size takes. The bounds are loose
(seconds) against what the quadratic scans took (minutes to hours at these sizes)."""

from __future__ import annotations

import random
import re
import time

import pytest

from compressor.retrieval.chunker import Chunking, chunk_text, fences
from compressor.text import segment

DOCUMENT_LIMIT = 1_000_000  # max_document_chars
HOSTILE = {
    "unclosed fences": "```a\n" * (DOCUMENT_LIMIT // 5),
    "plus-joined words": "information+" * (DOCUMENT_LIMIT // 12),
    "one long word": "x" * DOCUMENT_LIMIT,
    "one long line of words": "def f(" + "a b " * (DOCUMENT_LIMIT // 4),
    "e-mail without a domain end": "a@" + "b" * DOCUMENT_LIMIT,
    "short lines": "a\n" * (DOCUMENT_LIMIT // 2),
}


def seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_chunking_a_hostile_document_at_the_limit_is_linear(name):
    assert seconds(lambda: chunk_text(HOSTILE[name], Chunking())) < 20


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_cutting_a_hostile_chunk_into_units_is_linear(name):
    text = HOSTILE[name][:100_000]  # max_chunk_chars
    assert seconds(lambda: (segment.words(text), segment.sentences(text), segment.lines(text),
                            segment.looks_like_code(text), segment.code_header(text),
                            [segment.is_signature(r) for r in text.split("\n")])) < 10


def test_the_fence_scanner_finds_what_the_fence_regex_found():
    """The linear scanner replaced a lazy regular expression; on small texts both must agree."""
    regex = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
    parts = ["```", "~~~", "```py", "text", "", "``` ", "~~~\t", "a```", " ```", "```a", "~~"]
    rng = random.Random(0)
    for _ in range(5000):
        text = "\n".join(rng.choice(parts) for _ in range(rng.randint(0, 12)))
        assert fences(text) == [(m.start(), m.end()) for m in regex.finditer(text)], text


def test_e_mail_addresses_and_signatures_are_still_units():
    text = "Write to ops.team+pager@example.co.uk about v2.14.0 now."
    assert "ops.team+pager@example.co.uk" in [s.text(text).strip() for s in segment.words(text)]
    assert segment.is_signature("def compress(request: CompressRequest) -> CompressResult:")
    assert not segment.is_signature("def f(" + "a, " * 300 + "):")  # too long to be taken for one
