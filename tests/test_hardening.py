"""The service against what a hostile probe and a new user found: each test fails without its fix.

Real servers on loopback (the session's engine), real gRPC calls, real metrics scraped over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from focal_client import NO_RETRIES
from focal_client.rpc.focal.compressor.v1 import compressor_pb2 as pb
from focal_client.rpc.focal.compressor.v1 import compressor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_service import CHUNKS, SAMPLE, Running, slow_chunks

from compressor.client import FocalClient, wait_until_serving
from compressor.service.server import FocalServer
from compressor.service.settings import Settings
from devtools.data import ROOT
from devtools.ports import free_port

COMPRESSOR = "focal.compressor.v1.Compressor"


def scrape(running: Running) -> str:
    url = f"http://127.0.0.1:{running.settings.metrics_port}/metrics"
    return urllib.request.urlopen(url, timeout=5).read().decode()


def sample_value(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text page (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + ("{" if labels else " ")):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if labels else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def message(chunks: list[tuple[str, str]], query: str = "q", **fields) -> pb.CompressRequest:
    return pb.CompressRequest(query=query, chunks=[pb.Chunk(id=i, text=t) for i, t in chunks], rate=0.5, **fields)


@pytest.fixture(scope="module")
def running(engine):
    server = Running(engine, queue_depth=16)
    yield server
    server.server.drain()


def test_compress_without_a_deadline_is_answered(running):
    """grpcurl's default: no deadline. grpc-python then reports a huge time_remaining()."""
    stub = pb_grpc.CompressorStub(grpc.insecure_channel(running.target))
    reply = stub.Compress(message(CHUNKS[:3], SAMPLE["question"]))  # no timeout
    assert reply.usage.compressed_tokens > 0


def test_separator_is_bounded_and_counted(engine):
    server = Running(engine, max_request_tokens=2_000)
    try:
        stub = pb_grpc.CompressorStub(grpc.insecure_channel(server.target))
        with pytest.raises(grpc.RpcError) as caught:
            stub.Compress(message(CHUNKS[:2], options=pb.Options(separator="x" * 10_000)), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "options.separator: 10000 characters exceed the limit of 256" in caught.value.details()
        forty = [(f"c{i}", "A short note.") for i in range(40)]
        with pytest.raises(grpc.RpcError) as caught:  # 39 gaps of a 250-character separator
            stub.Compress(message(forty, options=pb.Options(separator=" ;" * 125)), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "separators" in caught.value.details() and "limit of 2000" in caught.value.details()
    finally:
        server.server.drain()


def test_empty_and_zero_ids_are_different_chunks(running):
    with running.client() as client:
        reply = client.compress("q", [("", "First note."), ("0", "Second note.")], rate=1.0)
    assert [c.id for c in reply.chunks] == ["", "0"]


def test_a_huge_request_is_dropped_at_its_deadline_and_frees_the_engine(engine):
    """Cancellation reaches inside the engine's passes: a 90,000-character chunk stops within a
    batch of its deadline, and the request behind it is served at once."""
    server = Running(engine, max_batch=1, queue_depth=4)
    try:
        with server.client() as client:
            # Distinct sentences: repeated ones would be embedded once, and the request would be cheap.
            notes = "".join(f"Release note {i}: service {i % 97} changed by owner {i % 13}. " for i in range(1_800))
            huge = client.stub.Compress.future(message([("huge", notes)]), timeout=3)
            time.sleep(0.5)
            started = time.monotonic()
            reply = client.compress(SAMPLE["question"], CHUNKS[:2], rate=0.5, timeout=120)
            waited = time.monotonic() - started
            with pytest.raises(grpc.RpcError) as caught:
                huge.result()
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert reply.usage.compressed_tokens > 0
        assert waited < 30, f"the request behind the expired one waited {waited:.0f} s"
        time.sleep(0.5)
        text = scrape(server)
        assert sample_value(text, "focal_queue_depth") == 0  # nothing left holding a slot
        assert sample_value(text, "focal_requests_total", code="DEADLINE_EXCEEDED") == 1
        assert sample_value(text, "focal_requests_total", code="CANCELLED") == 0
    finally:
        server.server.drain()


def test_a_deadline_the_queue_cannot_meet_is_refused_at_once(engine):
    server = Running(engine, max_batch=1, queue_depth=8)
    try:
        with server.client(retry=NO_RETRIES) as client:
            client.compress("q", slow_chunks(8), rate=0.5, timeout=120)  # the server measures its speed
            busy = client.stub.Compress.future(message(slow_chunks(60)), timeout=120)
            time.sleep(0.3)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:  # at least its own 60 chunks' work: seconds
                client.compress("q", slow_chunks(60), rate=0.5, timeout=1.0)
            assert time.monotonic() - started < 0.5
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "expected wait" in caught.value.details()
            assert busy.result().usage.compressed_tokens > 0
            assert client.compress("q", CHUNKS[:2], rate=0.5, timeout=120).usage.compressed_tokens > 0
    finally:
        server.server.drain()


def test_one_authorization_header_exactly_and_failures_are_counted(engine, caplog):
    server = Running(engine, auth_token="right-token")
    try:
        stub = pb_grpc.CompressorStub(grpc.insecure_channel(server.target))
        two = (("authorization", "Bearer wrong-token"), ("authorization", "Bearer right-token"))
        with pytest.raises(grpc.RpcError) as caught:
            stub.Compress(message(CHUNKS[:2]), metadata=two, timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "more than one authorization header" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Compress(message(CHUNKS[:2]), metadata=(("authorization", "Bearer guess-1"),), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        text = scrape(server)
        assert sample_value(text, "focal_auth_failures_total", reason="repeated") == 1
        assert sample_value(text, "focal_auth_failures_total", reason="wrong") == 1
        assert sample_value(text, "grpc_server_handled_total", grpc_service=COMPRESSOR, grpc_method="Compress",
                            grpc_code="UNAUTHENTICATED") == 2
        assert "guess-1" not in caplog.text and "wrong-token" not in caplog.text
    finally:
        server.server.drain()


@pytest.mark.parametrize("content", ["", "  \n"])
def test_an_empty_token_file_is_a_start_up_error(engine, tmp_path, content):
    token_file = tmp_path / "token"
    token_file.write_text(content)
    with pytest.raises(ValueError, match=r"auth_token_file: .* is empty"):
        FocalServer(Settings(port=0, metrics_port=0, auth_token_file=str(token_file)), engine=engine)


def test_a_port_in_use_fails_the_start(engine, running):
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{running.server.port}"):
        FocalServer(Settings(port=running.server.port, metrics_port=0), engine=engine)


def test_per_rpc_metrics_and_index_health_without_retrieval(running):
    with running.client() as client:
        client.compress("q", CHUNKS[:2], rate=0.5)
        with pytest.raises(grpc.RpcError):
            client.stats()
    text = scrape(running)
    assert sample_value(text, "grpc_server_handled_total", grpc_service=COMPRESSOR, grpc_method="Compress",
                        grpc_code="OK") >= 1
    assert sample_value(text, "grpc_server_handled_total", grpc_service="focal.compressor.v1.Index",
                        grpc_method="Stats", grpc_code="FAILED_PRECONDITION") == 1
    assert sample_value(text, "grpc_server_handling_seconds_count", grpc_service=COMPRESSOR,
                        grpc_method="Compress") >= 1
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(running.target))
    index = health.Check(health_pb2.HealthCheckRequest(service="focal.compressor.v1.Index"), timeout=5)
    assert index.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service=COMPRESSOR), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING


def test_a_failed_batch_is_retried_one_by_one_logged_and_counted(engine, caplog):
    """Two requests share a batch; one cannot be scored (its instruction fills the model's context),
    so the batch fails, and each request is then run alone: one answer, one INVALID_ARGUMENT."""
    server = Running(engine, max_batch=2, queue_depth=4, max_query_chars=100_000, max_request_tokens=100_000)
    try:
        with server.client() as client:
            busy = client.stub.Compress.future(message(slow_chunks(40)), timeout=120)
            time.sleep(0.3)
            good = client.stub.Compress.future(message(CHUNKS[:2]), timeout=120)
            bad = client.stub.Compress.future(
                message(CHUNKS[:2], options=pb.Options(instruction="Read every word. " * 2_500)), timeout=120)
            assert busy.result().usage.compressed_tokens > 0
            assert good.result().usage.compressed_tokens > 0
            with pytest.raises(grpc.RpcError) as caught:
                bad.result()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert sample_value(scrape(server), "focal_batch_retries_total") == 1
        assert "retrying its requests one at a time" in caplog.text
    finally:
        server.server.drain()


def test_server_output_is_json_lines_only(tmp_path):
    """A real `focal serve` with retrieval on (the embedder loads its weights) writes nothing but
    JSON objects: no progress bars, no raw tracebacks."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "compressor", "serve", "--host", "127.0.0.1", "--port",
                                str(port), "--metrics-port", "0", "--data-dir", str(tmp_path / "data")],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        wait_until_serving(f"127.0.0.1:{port}", 120, alive=lambda: process.poll() is None)
        with FocalClient(f"127.0.0.1:{port}") as client:
            client.upsert([("a", "The Seine flows through Paris.")], namespace="n")
            with pytest.raises(grpc.RpcError):
                client.compress("q", [("x", "y")], rate=2.0)
    finally:
        process.terminate()
        process.wait(timeout=60)
        reader.join(timeout=10)
    assert lines, "the server wrote nothing"
    for line in lines:
        json.loads(line)  # every line is one JSON object


def test_bad_settings_fail_at_once_with_one_line(tmp_path):
    config = tmp_path / "focal.toml"
    config.write_text('max_batch = 4\nport = "abc"\n')
    cases = [
        (["--config", str(config)], f"{config}:2: port must be a TOML integer"),
        (["--log-level", "TRACE"], "log_level: 'TRACE' is not one of"),
        (["--model", str(tmp_path / "missing.gguf")], "model: "),
        (["--auth-token-file", str(tmp_path / "absent")], "auth_token_file: cannot read"),
    ]
    for args, expected in cases:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "compressor", "serve", "--port", "0", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert time.monotonic() - started < 20  # before any model load
    done = subprocess.run([sys.executable, "-m", "compressor", "serve", "--port", "0"], cwd=ROOT,
                          env={**os.environ, "FOCAL_LOG_LEVEL": "verbose"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "log_level: 'verbose'" in done.stderr


def test_payloads_say_loudly_when_the_shared_data_is_absent(tmp_path, capsys):
    from loadtests.payloads import data_files

    assert data_files(tmp_path / "nowhere") == [ROOT / "examples" / "sample_request.jsonl"]
    assert "shared data" in capsys.readouterr().err


def test_the_steady_p95_bound_must_be_able_to_fire():
    done = subprocess.run([sys.executable, "-m", "loadtests.run", "--scenario", "steady", "--p95-ms", "120000",
                           "--timeout", "60"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "can never fire" in done.stderr
