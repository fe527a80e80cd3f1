"""The digest method on the real default model: within its budget, attributed, bounded in time,
and refused with a sentence where it cannot work; its pieces (citations, overlap, the budget cut)
on their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compressor.compression.digest import DigestLimits, attributed, fit
from compressor.compression.pipeline import Compressor
from compressor.compression.request import Chunk, CompressionInputError, CompressRequest, DigestSentence
from engine import Engine
from engine.device import preferred_dtype

SAMPLE = json.loads((Path(__file__).parent.parent / "examples" / "sample_request.jsonl").read_text())
EVIDENCE = [("release", "A release starts when the on-call engineer tags a commit."),
            ("canary", "The canary runs for 15 minutes before it is promoted to all pods.")]


@pytest.fixture(scope="module")
def compressor() -> Compressor:
    return Compressor(Engine.load(dtype=preferred_dtype()))


def request_of(**kwargs) -> CompressRequest:
    chunks = [Chunk(c["title"], f"{c['title']}\n{c['text']}") for c in SAMPLE["chunks"]]
    return CompressRequest(SAMPLE["question"], chunks, method="digest", **kwargs)


def test_citations_name_their_chunks_and_leave_the_text():
    sentences = attributed("The canary runs 15 minutes [2]. Releases start with a tag [1, 2]. [7] Unsourced.",
                           EVIDENCE)
    assert [s.text for s in sentences] == ["The canary runs 15 minutes.", "Releases start with a tag.", "Unsourced."]
    assert [s.chunk_ids for s in sentences[:2]] == [["canary"], ["release", "canary"]]
    assert sentences[2].chunk_ids == []  # [7] names no evidence, and no evidence holds its words


def test_a_repeated_sentence_is_kept_once():
    sentences = attributed("The canary runs 15 minutes [2]. The canary runs 15 minutes. It is promoted [2].", EVIDENCE)
    assert [s.text for s in sentences] == ["The canary runs 15 minutes.", "It is promoted."]


def test_uncited_sentences_go_to_the_evidence_holding_their_words():
    sentences = attributed("The canary runs for 15 minutes. Bananas are yellow.", EVIDENCE)
    assert [s.chunk_ids for s in sentences] == [["canary"], []]


def test_fit_cuts_at_a_sentence_and_never_exceeds_the_budget():
    words = lambda text: len(text.split())  # noqa: E731 - a stand-in tokenizer: one token per word
    sentences = [DigestSentence("one two three."), DigestSentence("four five."), DigestSentence("six seven eight.")]
    assert [s.text for s in fit(sentences, 6, words)] == ["one two three.", "four five."]
    assert [s.text for s in fit(sentences, 4, words)] == ["one two three."]
    assert [s.text for s in fit(sentences, 2, words)] == ["one two"]  # not even one sentence fits
    assert fit(sentences, 0, words) == []


@pytest.mark.parametrize("rate", [0.25, 0.125])
def test_digest_is_within_budget_and_attributed(compressor, rate):
    result = compressor.compress(request_of(rate=rate))
    ids = {c["title"] for c in SAMPLE["chunks"]}
    assert result.method == "digest" and result.digest_finish in ("eos", "length")
    assert result.digest, "the model wrote nothing"
    assert 0 < result.compressed_tokens <= result.target_tokens
    text = " ".join(s.text for s in result.digest)
    assert result.prompt == f"{text}\n\nQuestion: {SAMPLE['question']}"
    assert all(set(s.chunk_ids) <= ids for s in result.digest)
    assert any(s.chunk_ids for s in result.digest)
    assert all(c.kept_text == "" and c.kept_tokens == 0 for c in result.chunks)
    assert {"select", "digest"} <= set(result.timings)


def test_time_limit_ends_the_decode_and_keeps_the_budget(compressor):
    bounded = Compressor(compressor.engine, compressor.embedder, digest_limits=DigestLimits(max_seconds=0.0))
    result = bounded.compress(request_of(rate=0.25))
    assert result.digest_finish == "time"
    assert result.compressed_tokens <= result.target_tokens


def test_token_limit_bounds_a_large_budget(compressor):
    bounded = Compressor(compressor.engine, compressor.embedder, digest_limits=DigestLimits(max_tokens=12))
    result = bounded.compress(request_of(rate=1.0))
    assert result.digest_finish in ("eos", "length")
    assert result.compressed_tokens <= 12


@pytest.mark.parametrize("change,field", [({"query": "  "}, "query"), ({"adaptive": True}, "method")])
def test_what_a_digest_cannot_do_is_refused_with_a_sentence(change, field):
    request = request_of()
    for key, value in change.items():
        setattr(request, key, value)
    with pytest.raises(CompressionInputError) as error:
        request.validate()
    assert error.value.field == field
