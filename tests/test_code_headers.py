"""Code chunks read as their header, with the question as its documentation (no model needed)."""

from __future__ import annotations

from compressor.compression import relevance
from compressor.compression.relevance import ChunkSentences
from compressor.compression.scoring import ChunkTokens, question_suffix
from compressor.text import segment


def tokens_of(text: str) -> ChunkTokens:
    """One token per character: enough to check where views are cut."""
    return ChunkTokens(list(range(len(text))), [(i, i + 1) for i in range(len(text))])


def sentences_of(text: str) -> ChunkSentences:
    spans = relevance.units_of_text(text)
    return ChunkSentences(spans, [0.0] * len(spans), 0.0)


def test_the_header_runs_through_the_first_signature():
    text = "email/utils.py\n@cache\ndef parse(value,\n          strict=True):\n    return value.split()\n"
    header = segment.code_header(text)
    assert header is not None
    assert header.text(text) == "email/utils.py\n@cache\ndef parse(value,\n          strict=True):"
    brace = "function total(items) {\n  return items.reduce((a, b) => a + b, 0);\n}\n"
    assert segment.code_header(brace).text(brace) == "function total(items) {"


def test_prose_and_late_signatures_have_no_header():
    assert segment.code_header("The canary runs for 15 minutes. Then traffic shifts.") is None
    late = "\n".join(f"x{i} = {i}" for i in range(20)) + "\ndef f():\n    pass\n"
    assert segment.code_header(late) is None


def test_the_documentation_follows_the_language():
    assert relevance.documentation_suffix("class A:\n    def f(self):", "Do it.") == '\n        """Do it."""'
    assert relevance.documentation_suffix("def f(x):", "Do it.") == '\n    """Do it."""'
    assert relevance.documentation_suffix("fn main() {", "Do it.") == "\n    // Do it."


def test_a_long_header_keeps_its_signature():
    text = "# " + "padding " * 20 + "\ndef target(a, b):\n    return a + b\n"
    span = segment.code_header(text)
    header = span.text(text)
    view = relevance.header_view(text, tokens_of(text), span, 16)
    assert header.endswith("def target(a, b):")
    assert len(view.ids) == 16 and view.offsets[-1][1] == len(header)


def test_readings_split_code_headers_from_prose_candidates():
    texts = ["def a():\n    return 1\n", "Prose about things. More prose.", "def b():\n    return 2\n",
             "Other prose here. And more.", "def c():\n    return 3\n", "Last prose. End."]
    tokens = [tokens_of(t) for t in texts]
    sentences = {i: sentences_of(t) for i, t in enumerate(texts)}
    order = [4, 0, 1, 2, 3, 5]
    reads, documented = relevance.readings("What is returned?", order, texts, tokens, sentences,
                                           candidates=2, window=0, documented=2)
    assert documented == {4, 0}  # the embedder's two best code chunks; "b" is beyond the cap
    assert set(reads) == {4, 0, 1, 3}  # and the two best prose chunks, never a capped code chunk
    assert reads[4][1] == '\n    """What is returned?"""' and reads[1][1] == question_suffix("What is returned?")
    plain, none = relevance.readings("What is returned?", order, texts, tokens, sentences,
                                     candidates=2, window=0, documented=0)
    assert none == set() and set(plain) == {4, 0}  # documentation off: code chunks are prose candidates


def test_fusion_z_scores_each_signal_among_the_chunks_it_covers():
    fused = relevance.fuse({0: 1.0, 1: 0.0, 2: -1.0}, [({0: -5.0, 1: -1.0}, 1.0), ({2: 3.0}, 2.0)])
    base = relevance.zscores([1.0, 0.0, -1.0])
    assert fused[0] == base[0] - 1.0 and fused[1] == base[1] + 1.0
    assert fused[2] == base[2]  # one chunk alone has no spread: no z-score
