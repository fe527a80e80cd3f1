"""Budgets and usage in a downstream model's tokens: a named tokenizer.json (here the embedder's
WordPiece tokenizer, which counts text differently from the model's), in the library, the settings
and over gRPC."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from test_service import CHUNKS, SAMPLE, Running

from compressor.compression.counting import token_counter
from compressor.compression.pipeline import Compressor
from compressor.compression.request import Chunk, CompressionInputError, CompressRequest
from compressor.embedding.embedder import default_embedder_path
from compressor.service.settings import Settings
from engine import Engine
from engine.device import preferred_dtype

TOKENIZER = default_embedder_path() / "tokenizer.json"
SAMPLE_JSON = json.loads((Path(__file__).parent.parent / "examples" / "sample_request.jsonl").read_text())


@pytest.fixture(scope="module")
def compressor() -> Compressor:
    return Compressor(Engine.load(dtype=preferred_dtype()), tokenizers={"bert": token_counter(TOKENIZER)})


def request_of(**kwargs) -> CompressRequest:
    chunks = [Chunk(c["title"], f"{c['title']}\n{c['text']}") for c in SAMPLE_JSON["chunks"]]
    return CompressRequest(SAMPLE_JSON["question"], chunks, **kwargs)


@pytest.mark.parametrize("method", ["sentence", "chunk", "token"])
def test_the_budget_and_usage_count_in_the_named_tokenizer(compressor, method):
    bert = token_counter(TOKENIZER)
    result = compressor.compress(request_of(rate=0.3, method=method, budget_tokenizer="bert"))
    context = result.prompt.rsplit("\n\nQuestion:", 1)[0]
    joined = "\n\n".join(c["title"] + "\n" + c["text"] for c in SAMPLE_JSON["chunks"])
    assert result.tokenizer == "bert"
    assert result.original_tokens == bert(joined) != compressor.count(joined)
    assert result.target_tokens == int(0.3 * result.original_tokens)
    assert 0 < result.compressed_tokens == bert(context) <= result.target_tokens
    assert result.prompt_tokens == bert(result.prompt)
    assert all(c.kept_tokens == bert(c.kept_text) for c in result.chunks)
    # The budget is used, not wasted: the selection converts it into the model's tokens.
    assert result.compressed_tokens > 0.6 * result.target_tokens


def test_an_absolute_budget_in_the_named_tokenizer(compressor):
    result = compressor.compress(request_of(target_tokens=60, budget_tokenizer="bert"))
    assert result.target_tokens == 60 and 0 < result.compressed_tokens <= 60
    assert compressor.compress(request_of(target_tokens=60)).tokenizer == "model"


def test_an_unknown_tokenizer_is_refused_with_the_names_there_are(compressor):
    with pytest.raises(CompressionInputError, match="unknown tokenizer 'gpt'; this server has: bert") as error:
        compressor.compress(request_of(rate=0.5, budget_tokenizer="gpt"))
    assert error.value.field == "budget_tokenizer"


@pytest.mark.parametrize("value,message", [
    ("bert", "'bert' is not name=path"),
    (f"b={TOKENIZER},b={TOKENIZER}", "'b' is given twice"),
    ("b=/nowhere/tokenizer.json", "is not a file"),
    (f"b={TOKENIZER.parent / 'vocab.txt'}", "is not a tokenizer.json file"),
])
def test_bad_tokenizer_settings_stop_the_start_with_a_sentence(value, message):
    with pytest.raises(ValueError, match=f"tokenizers: .*{message}"):
        Settings(tokenizers=value).validate()


def test_budget_tokenizer_over_grpc(engine):
    server = Running(engine, tokenizers=f"bert={TOKENIZER}")
    try:
        with server.client() as client:
            reply = client.compress(SAMPLE["question"], CHUNKS, rate=0.3, budget_tokenizer="bert")
            assert reply.usage.tokenizer == "bert"
            assert 0 < reply.usage.compressed_tokens <= reply.usage.target_tokens
            assert client.compress(SAMPLE["question"], CHUNKS, rate=0.3).usage.tokenizer == "model"
            with pytest.raises(grpc.RpcError) as caught:
                client.compress(SAMPLE["question"], CHUNKS, rate=0.3, budget_tokenizer="gpt")
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bert" in caught.value.details()
    finally:
        server.server.drain()
