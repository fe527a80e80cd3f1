"""The gRPC service against a real server on loopback: contract, errors, load, cancellation, drain,
TLS and auth, metrics, logs, and random malformed input."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from focal_client import NO_RETRIES
from focal_client.rpc.focal.compressor.v1 import compressor_pb2 as pb
from focal_client.rpc.focal.compressor.v1 import compressor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.client import FocalClient
from compressor.service.server import FocalServer, log
from compressor.service.settings import Settings
from devtools.ports import free_port
from devtools.server_process import ServerProcess
from engine import Engine

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = json.loads((ROOT / "examples" / "sample_request.jsonl").read_text())
CHUNKS = [(c["title"], f"{c['title']}\n{c['text']}") for c in SAMPLE["chunks"]]
PARAGRAPH = ("Release train {i}.{k} leaves on Tuesday. Train {i}.{k} carries the merged changes of week {k}, "
             "and its manifest lists owners, risks and rollback steps for service {i}. ")


def slow_chunks(count: int = 120) -> list[tuple[str, str]]:
    """Enough text that one request keeps the engine busy for a few seconds. Every sentence is
    distinct: the compressor embeds a repeated sentence once, which would make the work cheap."""
    return [(f"s{i}", f"Note {i}. " + "".join(PARAGRAPH.format(i=i, k=k) for k in range(3))) for i in range(count)]


class Running:
    def __init__(self, engine: Engine, **overrides) -> None:
        self.settings = Settings(port=0, metrics_port=free_port(), drain_seconds=10, **overrides)
        self.server = FocalServer(self.settings, engine=engine).start()
        self.target = f"127.0.0.1:{self.server.port}"

    def client(self, **kwargs) -> FocalClient:
        return FocalClient(self.target, **kwargs)


@pytest.fixture(scope="module")
def server(engine):
    running = Running(engine, queue_depth=40)
    yield running
    running.server.drain()


def test_happy_path(server):
    with server.client() as client:
        reply = client.compress(SAMPLE["question"], CHUNKS, rate=0.3, reorder="relevance")
    assert "15 minutes" in reply.prompt
    assert 0 < reply.usage.compressed_tokens <= reply.usage.target_tokens < reply.usage.original_tokens
    assert [c.id for c in reply.chunks] == [c[0] for c in CHUNKS]
    assert min(reply.chunks, key=lambda c: c.rank).id == "Canary analysis"
    assert len(reply.request_id) == 16 and reply.model
    assert {"queue", "rank", "total"} <= set(reply.timings_ms)


def test_adaptive_budget_chooses_the_tokens_under_a_ceiling(server):
    with server.client() as client:
        free = client.compress(SAMPLE["question"], CHUNKS, adaptive=True)
        capped = client.compress(SAMPLE["question"], CHUNKS, adaptive=True, target_tokens=40)
    assert "15 minutes" in free.prompt
    assert 0 < free.usage.compressed_tokens < free.usage.original_tokens / 2
    assert free.usage.target_tokens == free.usage.original_tokens
    assert capped.usage.target_tokens == 40 and 0 < capped.usage.compressed_tokens <= 40


def test_digest_over_grpc(server):
    with server.client() as client:
        reply = client.compress(SAMPLE["question"], CHUNKS, rate=0.25, method="digest")
        with pytest.raises(grpc.RpcError) as refused:
            client.compress(SAMPLE["question"], CHUNKS, adaptive=True, method="digest")
    assert reply.digest and reply.digest_finish in ("eos", "length")
    assert 0 < reply.usage.compressed_tokens <= reply.usage.target_tokens
    assert reply.prompt.startswith(" ".join(s.text for s in reply.digest))
    assert {i for s in reply.digest for i in s.chunk_ids} <= {c[0] for c in CHUNKS}
    assert "digest" in reply.timings_ms
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "adaptive" in refused.value.details()


def test_health_and_reflection(server):
    channel = grpc.insecure_channel(server.target)
    status = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="focal.compressor.v1.Compressor"), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"focal.compressor.v1.Compressor", "grpc.health.v1.Health"} <= names
    channel.close()


@pytest.mark.parametrize("mutate,needle", [
    (lambda m: setattr(m, "rate", 1.5), "rate"),
    (lambda m: setattr(m, "target_tokens", 0), "target_tokens"),
    (lambda m: setattr(m, "method", 42), "method"),
    (lambda m: m.chunks.append(pb.Chunk(id="Release process", text="again")), "duplicate chunk id"),
    (lambda m: m.chunks.append(pb.Chunk(id="big", text="x" * 100_001)), "100000"),
    (lambda m: setattr(m, "query", "q" * 4001), "4000"),
    (lambda m: (m.adaptive.SetInParent(), setattr(m, "query", " ")), "needs one"),
    (lambda m: (m.adaptive.SetInParent(), setattr(m, "method", pb.METHOD_TOKEN)), "sentence and chunk"),
])
def test_invalid_argument_names_the_field(server, mutate, needle):
    message = pb.CompressRequest(query="q", chunks=[pb.Chunk(id=i, text=t) for i, t in CHUNKS])
    mutate(message)
    stub = pb_grpc.CompressorStub(grpc.insecure_channel(server.target))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Compress(message, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in caught.value.details()


def test_limits_are_configuration(engine):
    running = Running(engine, max_chunks=3, max_request_tokens=50, max_message_bytes=20_000)
    try:
        with running.client() as client:
            with pytest.raises(grpc.RpcError) as caught:
                client.compress("q", CHUNKS, rate=0.5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "8 chunks exceed the limit of 3" in caught.value.details()
            with pytest.raises(grpc.RpcError) as caught:
                client.compress("q", CHUNKS[:3], rate=0.5)
            assert "exceed the limit of 50 per request" in caught.value.details()
            with pytest.raises(grpc.RpcError) as caught:
                client.compress("q", [("big", "word " * 5_000)], rate=0.5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "bytes exceed the limit of 20000" in caught.value.details()
    finally:
        running.server.drain()


def test_32_concurrent_clients_all_answered(server):
    def call(index: int) -> pb.CompressResponse:
        with server.client() as client:
            return client.compress(f"{SAMPLE['question']} ({index})", CHUNKS, rate=0.25, timeout=300)

    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(call, range(32)))
    assert len(replies) == 32 and all(r.usage.compressed_tokens > 0 for r in replies)
    assert len({r.request_id for r in replies}) == 32


def test_queue_full_is_refused_at_once(engine):
    running = Running(engine, max_batch=1, queue_depth=0)
    try:
        with running.client(retry=NO_RETRIES) as client:  # the server's answer itself, not the client's retries
            busy = client.stub.Compress.future(
                pb.CompressRequest(query="q", chunks=[pb.Chunk(id=i, text=t) for i, t in slow_chunks()], rate=0.5),
                timeout=120)
            time.sleep(0.3)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                client.compress(SAMPLE["question"], CHUNKS, rate=0.5)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "admission slots" in caught.value.details()
            assert time.monotonic() - started < 1.0
            assert busy.result().usage.compressed_tokens > 0
    finally:
        running.server.drain()


def test_cancellation_and_deadline_free_capacity(engine):
    running = Running(engine, max_batch=1, queue_depth=1)
    try:
        with running.client() as client:
            slow = pb.CompressRequest(query="q", chunks=[pb.Chunk(id=i, text=t) for i, t in slow_chunks()], rate=0.5)
            first = client.stub.Compress.future(slow, timeout=120)
            time.sleep(0.3)
            queued = client.stub.Compress.future(slow, timeout=120)
            time.sleep(0.2)
            queued.cancel()
            time.sleep(0.2)
            follow_up = client.stub.Compress.future(slow, timeout=0.5)  # admitted, then its deadline passes
            with pytest.raises(grpc.RpcError) as caught:
                follow_up.result()
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(0.2)
            assert running.server.scheduler.admitted == 1  # only the running request holds a slot
            assert first.result().usage.compressed_tokens > 0
            assert client.compress(SAMPLE["question"], CHUNKS, rate=0.5).usage.compressed_tokens > 0
    finally:
        running.server.drain()


def test_bearer_token(engine):
    running = Running(engine, auth_token="s3cret-token")
    try:
        for token in (None, "wrong"):
            with running.client(token=token) as client, pytest.raises(grpc.RpcError) as caught:
                client.compress("q", CHUNKS[:2], rate=0.5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with running.client(token="s3cret-token") as client:
            assert client.compress("q", CHUNKS[:2], rate=0.5).prompt
        channel = grpc.insecure_channel(running.target)  # probes need no token
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
    finally:
        running.server.drain()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=focal-test-ca")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        (folder / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")
    return folder


def test_tls_and_mutual_tls(engine, certificates):
    pki = certificates
    tls = Running(engine, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"))
    try:
        with FocalClient(f"localhost:{tls.server.port}", root_ca=pki / "ca.pem") as client:
            assert client.compress("q", CHUNKS[:2], rate=0.5).prompt
        with tls.client(timeout=3) as plain, pytest.raises(grpc.RpcError):
            plain.compress("q", CHUNKS[:2], rate=0.5)
    finally:
        tls.server.drain()
    health_port = free_port()
    mtls = Running(engine, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                   tls_client_ca=str(pki / "ca.pem"), health_port=health_port)
    try:
        probe = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{health_port}"))  # as kubelet probes
        assert probe.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        with FocalClient(f"localhost:{mtls.server.port}", root_ca=pki / "ca.pem", client_cert=pki / "client.pem",
                         client_key=pki / "client.key") as client:
            assert client.compress("q", CHUNKS[:2], rate=0.5).prompt
        with FocalClient(f"localhost:{mtls.server.port}", root_ca=pki / "ca.pem", timeout=3) as anonymous, \
                pytest.raises(grpc.RpcError) as caught:
            anonymous.compress("q", CHUNKS[:2], rate=0.5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        mtls.server.drain()


def test_metrics_and_logs_carry_no_content(server):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    marker = "zebra-quartz-7781"
    try:
        with server.client() as client:
            # The second request reuses the instruction's KV from the prefix cache (the ranking pass
            # reads it before every chunk; it is long enough to fill whole cache blocks).
            for _ in range(2):
                client.compress(f"Where is {marker}?", [("m", f"The {marker} lives in rack 9."), *CHUNKS[:2]],
                                rate=0.5, instruction="Answer from the notes below. Say which note you used, quote "
                                                      "the sentence that holds the answer, and answer 'not in the "
                                                      "notes' when none of them does.")
    finally:
        log.removeHandler(handler)
    logged = stream.getvalue()
    assert "compress" in logged and marker not in logged
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{server.settings.metrics_port}/metrics", timeout=5).read()
    text = scraped.decode()
    for name in ("focal_request_seconds_bucket", 'focal_requests_total{code="OK"}', "focal_tokens_in_total",
                 "focal_compression_ratio_bucket", "focal_queue_depth", "focal_batch_size_bucket"):
        assert name in text
    assert marker not in text
    hits = re.search(r"^focal_prefix_cache_hits_total (\S+)$", text, re.MULTILINE)
    reused = re.search(r"^focal_prefix_cache_reused_tokens_total (\S+)$", text, re.MULTILINE)
    assert hits and float(hits.group(1)) >= 1 and reused and float(reused.group(1)) >= 16


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_random_bytes_never_internal(server, payload):
    channel = grpc.insecure_channel(server.target)
    call = channel.unary_unary("/focal.compressor.v1.Compressor/Compress",
                               request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
    try:
        call(payload, timeout=30)
    except grpc.RpcError as error:
        assert error.code() != grpc.StatusCode.INTERNAL, error.details()
    finally:
        channel.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.text(max_size=60), texts=st.lists(st.text(max_size=80), max_size=6),
       rate=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32)),
       method=st.integers(0, 5), reorder=st.integers(0, 5))
def test_random_requests_never_internal(server, query, texts, rate, method, reorder):
    message = pb.CompressRequest(query=query, chunks=[pb.Chunk(id=str(i % 4), text=t) for i, t in enumerate(texts)],
                                 method=method, options=pb.Options(reorder=reorder))
    if rate is not None:
        message.rate = rate
    try:
        reply = pb_grpc.CompressorStub(grpc.insecure_channel(server.target)).Compress(message, timeout=60)
        assert reply.usage.compressed_tokens <= reply.usage.target_tokens
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()


def test_server_alive_after_the_storm(server):
    with server.client() as client:
        assert client.compress(SAMPLE["question"], CHUNKS, rate=0.5).prompt


def test_sigterm_drains(tmp_path):
    port, metrics, log_path = free_port(), free_port(), tmp_path / "server.log"
    server = ServerProcess(port, {"FOCAL_METRICS_PORT": str(metrics), "FOCAL_DRAIN_SECONDS": "30"}, log_path)
    try:
        server.start(timeout=60)
        client = FocalClient(server.target, retry=NO_RETRIES)
        in_flight = client.stub.Compress.future(
            pb.CompressRequest(query="q", chunks=[pb.Chunk(id=i, text=t) for i, t in slow_chunks(24)], rate=0.5),
            timeout=120)
        time.sleep(0.5)
        server.terminate()
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as caught:
            client.compress("q", CHUNKS[:2], rate=0.5, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert in_flight.result().usage.compressed_tokens > 0  # nothing acknowledged is lost
        assert server.process.wait(timeout=60) == 0
        lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        assert [e["event"] for e in lines if e["event"] in ("serving", "draining", "stopped")] == \
            ["serving", "draining", "stopped"]
    finally:
        server.kill()

