"""The compressor on the real default model: budgets, methods, options, edge cases, bad input."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from compressor.cli import main
from compressor.compression import relevance
from compressor.compression.pipeline import Compressor
from compressor.compression.request import Chunk, CompressionInputError, CompressOptions, CompressRequest
from engine import Engine
from engine.device import preferred_dtype

SAMPLE = Path(__file__).parent.parent / "examples" / "sample_request.jsonl"


@pytest.fixture(scope="module")
def compressor() -> Compressor:
    return Compressor(Engine.load(dtype=preferred_dtype()))


@pytest.fixture(scope="module")
def sample() -> dict:
    return json.loads(SAMPLE.read_text())


def request_of(sample: dict, **kwargs) -> CompressRequest:
    chunks = [Chunk(c["title"], f"{c['title']}\n{c['text']}") for c in sample["chunks"]]
    return CompressRequest(sample["question"], chunks, **kwargs)


@pytest.mark.parametrize("method", ["token", "sentence", "chunk"])
@pytest.mark.parametrize("rate", [0.5, 0.25, 0.125])
def test_budget_is_honoured_and_reported(compressor, sample, method, rate):
    result = compressor.compress(request_of(sample, rate=rate, method=method))
    assert result.target_tokens == int(rate * result.original_tokens)
    assert 0 < result.compressed_tokens <= result.target_tokens
    assert result.compressed_tokens == compressor.count(result.prompt.rsplit("\n\nQuestion:", 1)[0])
    assert result.prompt.endswith(f"Question: {sample['question']}")
    assert sum(c.kept_tokens > 0 for c in result.chunks) >= 1
    assert result.ratio >= 1 / rate * 0.9 or method != "token"


def test_relevant_chunk_ranks_first_and_keeps_the_answer(compressor, sample):
    result = compressor.compress(request_of(sample, rate=0.25))
    best = min(result.chunks, key=lambda c: c.rank)
    assert best.id == "Canary analysis"
    assert "15 minutes" in result.prompt
    assert [c.rank for c in sorted(result.chunks, key=lambda c: -c.relevance)] == list(range(len(result.chunks)))


def test_methods_keep_their_units_whole(compressor, sample):
    originals = {c["title"]: f"{c['title']}\n{c['text']}" for c in sample["chunks"]}
    chunk_result = compressor.compress(request_of(sample, rate=0.3, method="chunk"))
    for c in chunk_result.chunks:
        assert c.kept_text in ("", originals[c.id].strip())
    sentence_result = compressor.compress(request_of(sample, rate=0.3, method="sentence"))
    for c in sentence_result.chunks:
        for sentence in re.split(r"(?<=[.!?])\s+|\n", c.kept_text):
            assert sentence.strip() in originals[c.id]
    token_result = compressor.compress(request_of(sample, rate=0.3, method="token"))
    every_word = " ".join(originals.values())
    for c in token_result.chunks:
        for word in re.findall(r"\d[\d.,:%]*\d|\w+", c.kept_text):
            assert re.search(rf"(?<![\w.]){re.escape(word)}", every_word), word
    assert "0.5%" in token_result.prompt or "0.5" not in token_result.prompt


def test_force_tokens_and_instruction(compressor, sample):
    options = CompressOptions(force_tokens=["Monday", "v2.14.0"], instruction="Answer from the context only.")
    result = compressor.compress(request_of(sample, rate=0.25, method="token", options=options))
    assert result.prompt.startswith("Answer from the context only.")
    kept_ids = {c.id for c in result.chunks if c.kept_tokens}
    if "On-call rotation" in kept_ids:
        assert "Monday" in result.prompt


def test_a_forced_word_survives_where_it_would_be_dropped(compressor, sample):
    """Find words that compression drops from chunks it keeps in part; forced, each one stays."""
    plain = compressor.compress(request_of(sample, rate=0.3, method="token"))
    texts = {c["title"]: f"{c['title']}\n{c['text']}" for c in sample["chunks"]}
    dropped = {}
    for chunk in plain.chunks:
        if 0 < chunk.kept_tokens < chunk.original_tokens:
            kept = set(re.findall(r"[A-Za-z]{5,}", chunk.kept_text))
            # whole words only: "migration" inside "down-migration" is not a unit of its own
            missing = [w for w in re.findall(r"(?<![\w'’-])[A-Za-z]{5,}(?![\w'’-])", texts[chunk.id]) if w not in kept]
            if missing:
                dropped[chunk.id] = missing[-1]
    assert len(dropped) >= 2, "the sample should lose words from at least two partly kept chunks"
    forced = CompressOptions(force_tokens=sorted(set(dropped.values())))
    result = compressor.compress(request_of(sample, rate=0.3, method="token", options=forced))
    assert result.compressed_tokens <= result.target_tokens
    by_id = {c.id: c for c in result.chunks}
    for chunk_id, word in dropped.items():
        if by_id[chunk_id].kept_tokens:  # forced words are kept whenever their chunk is
            assert re.search(rf"\b{word}\b", by_id[chunk_id].kept_text), (chunk_id, word)


@pytest.mark.parametrize("reorder", ["original", "relevance", "edges"])
def test_reorder(compressor, sample, reorder):
    result = compressor.compress(request_of(sample, rate=0.6, method="chunk",
                                            options=CompressOptions(reorder=reorder)))
    kept = [c for c in result.chunks if c.kept_text]
    positions = sorted(kept, key=lambda c: result.prompt.index(c.kept_text))
    ranks = [c.rank for c in positions]
    if reorder == "original":
        assert [c.id for c in positions] == [c.id for c in kept]
    elif reorder == "relevance":
        assert ranks == sorted(ranks)
    else:
        assert ranks[0] == 0 and ranks[-1] == 1 and len(ranks) >= 3


def test_no_chunks(compressor):
    result = compressor.compress(CompressRequest("Anything?", [], rate=0.5))
    assert result.prompt == "Question: Anything?"
    assert (result.original_tokens, result.compressed_tokens, result.chunks) == (0, 0, [])


def test_empty_query_ranks_by_retriever_score(compressor, sample):
    chunks = [Chunk(str(i), c["text"], score=float(i)) for i, c in enumerate(sample["chunks"])]
    result = compressor.compress(CompressRequest("", chunks, rate=0.3, method="chunk"))
    assert min(result.chunks, key=lambda c: c.rank).id == str(len(chunks) - 1)
    assert "Question:" not in result.prompt


def test_budget_larger_than_input_keeps_everything(compressor, sample):
    result = compressor.compress(request_of(sample, target_tokens=10_000))
    assert result.target_tokens == result.original_tokens
    for chunk, given in zip(result.chunks, sample["chunks"]):
        assert chunk.kept_text == f"{given['title']}\n{given['text']}"


def test_huge_chunk_longer_than_the_context(compressor, sample):
    filler = " ".join(f"Line {i} of the archive lists routine maintenance on rack {i % 40}." for i in range(900))
    huge = Chunk("huge", filler + " The canary waits for 15 minutes before promotion.")
    assert len(compressor.engine.encode(huge.text)) > compressor.engine.context_length
    result = compressor.compress(CompressRequest(sample["question"], [huge, Chunk("small", "Cats sleep a lot.")],
                                                 target_tokens=300))
    assert result.compressed_tokens <= 300
    assert result.chunks[0].original_tokens > compressor.engine.context_length


def test_abandoned_work_stops_inside_the_engine_passes(compressor, sample):
    """A request whose caller gives up is dropped within one engine batch, not after its passes."""
    filler = " ".join(f"Line {i} of the archive lists routine maintenance on rack {i % 40}." for i in range(900))
    request = CompressRequest(sample["question"], [Chunk("huge", filler)], target_tokens=300)
    started = time.perf_counter()
    give_up = started + 0.5
    assert compressor.compress_many([request], alive=lambda _r: time.perf_counter() < give_up) == [None]
    assert time.perf_counter() - started < 30  # one prefill chunk past the give-up; all its passes take minutes


def test_non_english_and_mixed_code_and_prose(compressor):
    chunks = [
        Chunk("fr", "La tour Eiffel a été construite en 1889 pour l'Exposition universelle de Paris."),
        Chunk("zh", "长城是中国古代的军事防御工程，全长超过两万公里。"),
        Chunk("code", "def parse_header(line: str) -> dict:\n    key, _, value = line.partition(':')\n"
                      "    result = {key.strip(): value.strip()}\n    return result\n"),
        Chunk("mixed", "Call `parse_header()` on each line; it returns a dict such as {'Host': 'example.com'}."),
    ]
    result = compressor.compress(CompressRequest("Quand la tour Eiffel a-t-elle été construite ?", chunks,
                                                 rate=0.7))
    assert result.compressed_tokens <= result.target_tokens
    code = next(c for c in result.chunks if c.id == "code")
    if code.kept_text:
        assert code.kept_text.startswith("def parse_header(line: str) -> dict:")
    assert "parse_heade " not in result.prompt and "1889" in result.prompt


def test_duplicate_chunks_are_kept_once(compressor, sample):
    text = sample["chunks"][3]["text"]
    chunks = [Chunk("a", text), Chunk("b", "  " + text.upper() + " "), Chunk("c", sample["chunks"][0]["text"])]
    result = compressor.compress(CompressRequest(sample["question"], chunks, target_tokens=10_000))
    assert result.chunks[1].duplicate_of == "a" and result.chunks[1].kept_text == ""
    assert result.prompt.lower().count("the canary is promoted") == 1


@pytest.mark.parametrize("kwargs,field", [
    ({"rate": 0.0}, "rate"), ({"rate": 1.5}, "rate"), ({"target_tokens": 0}, "target_tokens"),
    ({"rate": 0.5, "target_tokens": 10}, "rate"), ({"method": "magic"}, "method"),
    ({"adaptive": True, "rate": 0.5}, "rate"), ({"adaptive": True, "method": "token"}, "method"),
    ({"options": CompressOptions(reorder="random")}, "options.reorder"),
])
def test_bad_requests_name_the_field(compressor, kwargs, field):
    with pytest.raises(CompressionInputError) as caught:
        compressor.compress(CompressRequest("q?", [Chunk("1", "text")], **kwargs))
    assert caught.value.field == field


def test_adaptive_budget_needs_a_query(compressor):
    with pytest.raises(CompressionInputError) as caught:
        compressor.compress(CompressRequest(" ", [Chunk("1", "text")], adaptive=True))
    assert caught.value.field == "query"


def test_duplicate_ids_are_rejected(compressor):
    with pytest.raises(CompressionInputError, match=r"chunks\[1\]\.id"):
        compressor.compress(CompressRequest("q?", [Chunk("1", "a"), Chunk("1", "b")]))


def test_cli_compresses_the_sample(capsys):
    assert main(["compress", str(SAMPLE), "--rate", "0.3", "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["compressed_tokens"] <= result["target_tokens"]
    assert "fewer" in err


def test_cli_reports_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json}\n')
    assert main(["compress", str(bad), "--query", "q"]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


def test_many_requests_share_passes_and_match_one_by_one(compressor, sample):
    requests = [request_of(sample, rate=0.25), request_of(sample, rate=0.5, method="sentence"),
                CompressRequest("Who is on call?", [Chunk("x", sample["chunks"][4]["text"]),
                                                    Chunk("y", sample["chunks"][6]["text"])], rate=0.5)]
    together = compressor.compress_many(requests)
    alone = [compressor.compress(r) for r in requests]
    for a, b in zip(together, alone):
        assert a.prompt == b.prompt
        assert [c.rank for c in a.chunks] == [c.rank for c in b.chunks]


def test_empty_query_token_method_uses_plain_surprisal(compressor, sample):
    chunks = [Chunk(str(i), c["text"]) for i, c in enumerate(sample["chunks"])]
    result = compressor.compress(CompressRequest("", chunks, rate=0.3, method="token"))
    assert 0 < result.compressed_tokens <= result.target_tokens


def test_contrastive_score_is_available(sample):
    from compressor.compression.pipeline import Tuning

    contrastive = Compressor(Engine.load(dtype=preferred_dtype()), tuning=Tuning(contrast=1.0))
    result = contrastive.compress(request_of(sample, rate=0.3, method="token"))
    assert 0 < result.compressed_tokens <= result.target_tokens
    assert "15 minutes" in result.prompt


def test_default_method_keeps_whole_sentences_and_the_answer(compressor, sample):
    result = compressor.compress(request_of(sample, rate=0.25))
    assert result.method == "sentence"
    assert "15 minutes" in result.prompt
    originals = {c["title"]: f"{c['title']}\n{c['text']}" for c in sample["chunks"]}
    for chunk in result.chunks:
        for sentence in re.split(r"(?<=[.!?])\s+|\n", chunk.kept_text):
            assert sentence.strip() in originals[chunk.id]
    assert "embed" in result.timings and "fine" not in result.timings


def test_a_kept_code_line_brings_its_signature(compressor):
    code = ("def rotate_keys(store, now):\n    expired = [k for k in store if k.expires < now]\n"
            "    for key in expired:\n        store.replace(key, key.renew(now))\n    return len(expired)\n")
    prose = [Chunk(str(i), f"Release {i} shipped the usual fixes to the dashboard and the docs.") for i in range(6)]
    result = compressor.compress(CompressRequest("How are expired keys renewed?", [Chunk("code", code), *prose],
                                                 rate=0.3))
    kept = next(c for c in result.chunks if c.id == "code").kept_text
    assert kept.startswith("def rotate_keys(store, now):") and "renew" in kept


def test_the_question_is_likeliest_as_the_documentation_of_the_function_it_describes(compressor):
    """The model's reading of code headers, on the real default model: the question as a docstring
    is likelier after the header of the function it describes than after any other."""
    bodies = {"def celsius_to_fahrenheit(degrees):": "    return degrees * 9 / 5 + 32",
              "def send_email(recipient, subject, body):": "    smtp.send(recipient, subject, body)",
              "def read_config(path):": "    return json.loads(open(path).read())",
              "def shuffle_deck(cards):": "    random.shuffle(cards)\n    return cards",
              "def count_words(text):": "    return len(text.split())"}
    texts = [f"{header}\n{body}\n" for header, body in bodies.items()]
    tokens = compressor.scorer.tokenize(texts)
    sentences = {i: relevance.ChunkSentences(relevance.units_of_text(t), [0.0], 0.0) for i, t in enumerate(texts)}
    question = "Convert a temperature in degrees Celsius to degrees Fahrenheit."
    reads, documented = relevance.readings(question, range(len(texts)), texts, tokens, sentences, 3, 32, 8)
    assert documented == set(range(len(texts)))
    compressor.scorer.coarse(list(reads.values()), "", plain=False)
    likelihood = [reads[i][0].relevance for i in range(len(texts))]
    assert max(range(len(texts)), key=likelihood.__getitem__) == 0


@pytest.mark.parametrize("method", ["sentence", "chunk"])
def test_adaptive_budget_keeps_the_answer_and_drops_the_rest(compressor, sample, method):
    result = compressor.compress(request_of(sample, adaptive=True, method=method))
    assert "15 minutes" in result.prompt
    assert 0 < result.compressed_tokens < result.original_tokens / 2
    assert result.target_tokens == result.original_tokens
    capped = compressor.compress(request_of(sample, adaptive=True, method=method, target_tokens=60))
    assert capped.target_tokens == 60 and capped.compressed_tokens <= 60


def test_readme_grpcurl_example_keeps_its_answer(compressor):
    """The README's canary example, parsed from the README and compressed as the server would."""
    from focal_client.rpc.focal.compressor.v1 import compressor_pb2 as pb
    from google.protobuf import json_format

    from compressor.service.protocol import to_request
    from compressor.service.settings import Settings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    body = re.search(r"-d '(\{.*?\})' localhost:50051 focal\.compressor\.v1\.Compressor/Compress", readme, re.S)
    assert body, "the README's grpcurl Compress example is missing"
    request = to_request(json_format.Parse(body.group(1), pb.CompressRequest()), Settings())
    assert "15 minutes" in compressor.compress(request).prompt
