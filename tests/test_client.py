"""The light client distribution (clients/python): no ML stack, every request field, typed errors,
clear ValueErrors, gRPC's own retries, the asyncio client and LLMLingua's call shape, against real
gRPC servers on loopback (Focal itself, and a scripted server for the retry policy)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import tomllib
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from focal_client import (
    NO_RETRIES,
    AsyncFocalClient,
    FocalClient,
    InvalidArgument,
    ResourceExhausted,
    RetryPolicy,
    Unavailable,
    pb,
)
from test_service import CHUNKS, SAMPLE, Running

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(engine):
    running = Running(engine, queue_depth=40)
    yield running
    running.server.drain()


def test_the_distribution_needs_no_ml_stack():
    declared = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(d.split(">")[0].split("=")[0] for d in declared) == ["grpcio", "protobuf"]
    probe = ("import sys, focal_client, focal_client.aio, focal_client.lingua; "
             "heavy = {'torch', 'numpy', 'transformers', 'sentence_transformers', 'compressor', 'engine'}; "
             "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          cwd=ROOT / "clients" / "python")
    assert done.stdout.strip() == "[]"


def test_typos_are_value_errors_listing_the_choices(server):
    with server.client() as client:
        with pytest.raises(ValueError, match=r"unknown method 'sentense'; choose one of '', 'token', 'sentence'"):
            client.compress("q", CHUNKS, rate=0.5, method="sentense")
        with pytest.raises(ValueError, match=r"unknown reorder 'edge'.*'edges'"):
            client.compress("q", CHUNKS, rate=0.5, reorder="edge")
        with pytest.raises(ValueError, match="rate or target_tokens"):
            client.compress("q", CHUNKS, rate=0.5, target_tokens=10)
        with pytest.raises(ValueError, match="a chunk is"):
            client.compress("q", ["just text"], rate=0.5)


def test_every_request_field_reaches_the_server(server):
    with server.client() as client:
        plain = client.compress(SAMPLE["question"], CHUNKS, rate=0.5)
        shaped = client.compress(SAMPLE["question"], [(*c, 0.5) for c in CHUNKS], rate=0.5, include_question=False,
                                 separator="\n--\n", instruction="Answer briefly.", force_tokens=["Tuesday"])
    assert plain.prompt.rstrip().endswith(SAMPLE["question"])
    assert not shaped.prompt.rstrip().endswith(SAMPLE["question"]) and shaped.prompt.startswith("Answer briefly.")
    kept = [c for c in shaped.chunks if c.kept_tokens]
    assert len(kept) > 1 and "\n--\n" in shaped.prompt


def test_server_errors_are_typed_with_code_and_sentence(server):
    with server.client() as client, pytest.raises(InvalidArgument) as caught:
        client.compress("q", CHUNKS, rate=2.0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "rate" in caught.value.details()
    assert isinstance(caught.value, grpc.RpcError)  # code written against gRPC's own errors keeps working


def test_async_client_has_the_same_surface(server):
    async def calls() -> tuple:
        async with AsyncFocalClient(server.target) as client:
            replies = await asyncio.gather(*[client.compress(SAMPLE["question"], CHUNKS, rate=0.5)
                                             for _ in range(3)])
            adaptive = await client.compress(SAMPLE["question"], CHUNKS, adaptive=True, target_tokens=200)
            lingua = await client.compress_prompt([t for _, t in CHUNKS], question=SAMPLE["question"], rate=0.4)
            with pytest.raises(InvalidArgument):
                await client.compress("q", CHUNKS, rate=2.0)
            return replies, adaptive, lingua

    replies, adaptive, lingua = asyncio.run(calls())
    with server.client() as client:
        sync = client.compress(SAMPLE["question"], CHUNKS, rate=0.5)
    assert {r.prompt for r in replies} == {sync.prompt}
    assert 0 < adaptive.usage.compressed_tokens <= 200
    assert "15 minutes" in lingua["compressed_prompt"]


def test_compress_prompt_returns_llmlingua_keys(server):
    context = [t for _, t in CHUNKS]
    with server.client() as client:
        result = client.compress_prompt(context, instruction="Answer briefly.", question=SAMPLE["question"],
                                        rate=0.4, condition_in_question="after_condition", rank_method="longllmlingua")
        fixed = client.compress_prompt(context, question=SAMPLE["question"], target_token=60)
        reply = client.compress(SAMPLE["question"], [(str(i), t) for i, t in enumerate(context)], rate=0.4,
                                instruction="Answer briefly.")
        with pytest.raises(TypeError, match="no_such_option"):
            client.compress_prompt(context, question="q", no_such_option=1)
        with pytest.raises(ValueError, match="reorder_context"):
            client.compress_prompt(context, question="q", reorder_context="two_stage")
    assert set(result) == {"compressed_prompt", "origin_tokens", "compressed_tokens", "ratio", "rate", "saving"}
    assert result["compressed_prompt"] == reply.prompt
    assert result["compressed_tokens"] == reply.usage.prompt_tokens < result["origin_tokens"]
    assert result["ratio"] == f"{result['origin_tokens'] / result['compressed_tokens']:.1f}x"
    assert result["rate"].endswith("%") and result["saving"].startswith(", Saving $")
    assert fixed["compressed_tokens"] - (fixed["origin_tokens"] - 60) <= 60  # the context kept at most 60


class ScriptedCompressor:
    """A real gRPC server for the Compressor service that refuses the first ``refusals`` calls with
    ``code``, then answers; it counts the attempts it saw."""

    def __init__(self, refusals: int, code: grpc.StatusCode) -> None:
        self.refusals, self.code, self.attempts = refusals, code, []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(
            self.compress, request_deserializer=pb.CompressRequest.FromString,
            response_serializer=pb.CompressResponse.SerializeToString)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("focal.compressor.v1.Compressor", {"Compress": handler}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def compress(self, request: pb.CompressRequest, context: grpc.ServicerContext) -> pb.CompressResponse:
        self.attempts.append(time.monotonic())
        if len(self.attempts) <= self.refusals:
            context.abort(self.code, "queue full: retry with backoff")
        return pb.CompressResponse(prompt=f"answered after {len(self.attempts)} attempts")


@pytest.mark.parametrize("code", [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE])
def test_refusals_are_retried_with_backoff(code):
    scripted = ScriptedCompressor(refusals=2, code=code)
    try:
        policy = RetryPolicy(attempts=4, initial_backoff_s=0.2, max_backoff_s=1.0)
        with FocalClient(f"127.0.0.1:{scripted.port}", retry=policy, timeout=30) as client:
            assert client.compress("q", [("a", "text")]).prompt == "answered after 3 attempts"
        assert len(scripted.attempts) == 3
    finally:
        scripted.server.stop(0)


def test_retries_give_up_with_the_typed_error():
    scripted = ScriptedCompressor(refusals=10, code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    try:
        with FocalClient(f"127.0.0.1:{scripted.port}", retry=RetryPolicy(attempts=3, initial_backoff_s=0.05),
                         timeout=30) as client, pytest.raises(ResourceExhausted, match="retry with backoff"):
            client.compress("q", [("a", "text")])
        assert len(scripted.attempts) == 3
        scripted.attempts.clear()
        with FocalClient(f"127.0.0.1:{scripted.port}", retry=NO_RETRIES) as client, \
                pytest.raises(ResourceExhausted):
            client.compress("q", [("a", "text")])
        assert len(scripted.attempts) == 1
    finally:
        scripted.server.stop(0)


def test_async_retries_and_a_server_that_is_gone():
    scripted = ScriptedCompressor(refusals=1, code=grpc.StatusCode.UNAVAILABLE)

    async def call(port: int) -> str:
        async with AsyncFocalClient(f"127.0.0.1:{port}", timeout=10) as client:
            return (await client.compress("q", [("a", "text")])).prompt

    try:
        assert asyncio.run(call(scripted.port)) == "answered after 2 attempts"
    finally:
        scripted.server.stop(0)
    with pytest.raises(Unavailable):
        asyncio.run(call(scripted.port))  # nothing listens there any more


def test_retry_policy_is_checked():
    with pytest.raises(ValueError, match=r"1\.\.5"):
        RetryPolicy(attempts=9)
    with pytest.raises(ValueError, match="root_ca"):
        FocalClient("127.0.0.1:1", client_cert="c.pem", client_key="c.key")


@pytest.mark.slow
def test_installs_into_a_fresh_environment_without_torch_and_calls_a_real_server(server, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    str(ROOT / "clients" / "python")], check=True, timeout=600)
    script = ("import importlib.util, sys\n"
              "from focal_client import FocalClient\n"
              f"with FocalClient({server.target!r}) as client:\n"
              f"    reply = client.compress({SAMPLE['question']!r}, {CHUNKS!r}, rate=0.5)\n"
              "print(reply.usage.compressed_tokens > 0, '15 minutes' in reply.prompt, "
              "importlib.util.find_spec('torch') is None)\n")
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True"]
