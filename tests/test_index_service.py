"""The Index service and Compress-with-retrieval on real servers on loopback with real data
directories, their status codes, and a crash test: a server process killed with SIGKILL while it
acknowledges upserts loses none of them and repeats none."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import grpc
import pytest

from compressor.client import FocalClient
from compressor.embedding import Embedder
from compressor.retrieval.store import Document, IndexStore
from compressor.service.server import FocalServer
from compressor.service.settings import Settings
from devtools.ports import free_port
from devtools.server_process import ServerProcess

DOCUMENTS = [
    ("canary", "Canary analysis compares the new release on 5% of traffic with the baseline for 15 minutes "
               "before the rollout continues.", {"team": "release"}),
    ("freeze", "Code freeze starts on Thursday at noon; only hotfixes approved by the release manager merge "
               "after it.", {"team": "release"}),
    ("oncall", "The on-call engineer acknowledges pages within 5 minutes and writes the incident timeline.",
     {"team": "sre"}),
    ("budget", "The error budget is 43 minutes of downtime per month for tier-one services.", {"team": "sre"}),
]


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    settings = Settings(port=0, metrics_port=0, data_dir=str(tmp_path_factory.mktemp("data")), max_chunks=20,
                        auth_token="s3cret")
    running = FocalServer(settings, engine=engine).start()
    yield running
    running.drain()


def client_of(server: FocalServer, token: str | None = "s3cret") -> FocalClient:
    return FocalClient(f"127.0.0.1:{server.port}", token=token)


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def test_upsert_search_delete_stats(server):
    with client_of(server) as client:
        reply = client.upsert(DOCUMENTS, namespace="runbooks")
        assert (reply.documents, reply.chunks) == (4, 4)
        hits = client.search("How long does canary analysis run?", 2, namespace="runbooks").hits
        assert hits[0].document_id == "canary" and hits[0].chunk == 0 and hits[0].metadata["team"] == "release"
        assert hits[0].score > hits[1].score
        sre = client.search("How long does canary analysis run?", 4, namespace="runbooks", filter={"team": "sre"})
        assert {h.document_id for h in sre.hits} == {"oncall", "budget"}
        assert client.delete(["budget", "missing"], namespace="runbooks").deleted == 1
        stats = {s.name: s for s in client.stats().namespaces}
        assert (stats["runbooks"].documents, stats["runbooks"].chunks, stats["runbooks"].dim) == (3, 3, 384)
        assert client.stats().index_type == "flat" and client.stats().log_bytes > 0


def test_compress_with_retrieval(server):
    with client_of(server) as client:
        client.upsert(DOCUMENTS, namespace="ops")
        reply = client.compress("How long does canary analysis run before the rollout continues?", [],
                                rate=0.5, retrieve_top_k=3, namespace="ops")
        assert reply.chunks[0].id == "canary#0" and len(reply.chunks) == 3
        assert "15 minutes" in reply.prompt
        given = [("note", "Rollouts pause automatically when the error rate doubles.")]
        mixed = client.compress("When does the code freeze start?", given, rate=0.8, retrieve_top_k=2,
                                namespace="ops", filter={"team": "release"})
        assert mixed.chunks[0].id == "note" and {c.id for c in mixed.chunks[1:]} == {"canary#0", "freeze#0"}


@pytest.mark.parametrize("call,code,needle", [
    (lambda c: c.upsert([("x", "   ")], namespace="ops"), "INVALID_ARGUMENT", "documents[0].text: is empty"),
    (lambda c: c.upsert([("x", "a"), ("x", "b")], namespace="ops"), "INVALID_ARGUMENT", "duplicate document id"),
    (lambda c: c.upsert([("x", "a" * 1_000_001)], namespace="ops"), "INVALID_ARGUMENT", "exceed the limit"),
    (lambda c: c.upsert([("x", "a")], namespace="no spaces"), "INVALID_ARGUMENT", "not a valid name"),
    (lambda c: c.search("q", 5, namespace="nowhere"), "NOT_FOUND", "'nowhere' does not exist"),
    (lambda c: c.delete(["x"], namespace="nowhere"), "NOT_FOUND", "does not exist"),
    (lambda c: c.search("", 5, namespace="ops"), "INVALID_ARGUMENT", "query: is empty"),
    (lambda c: c.compress("q", [], retrieve_top_k=3, namespace="nowhere"), "NOT_FOUND", "does not exist"),
    (lambda c: c.compress("", [], retrieve_top_k=3), "INVALID_ARGUMENT", "query: is required with retrieve_top_k"),
    (lambda c: c.compress("q", [], retrieve_top_k=21), "INVALID_ARGUMENT", "exceed the limit of 20 chunks"),
])
def test_index_errors_have_codes_and_name_the_field(server, call, code, needle):
    with client_of(server) as client:
        client.upsert(DOCUMENTS[:1], namespace="ops")
        got, details = code_of(lambda: call(client))
    assert got.name == code and needle in details


def test_index_needs_the_token_and_retrieval_off_is_a_precondition(server, engine):
    with client_of(server, token=None) as anonymous:
        assert code_of(lambda: anonymous.stats())[0] == grpc.StatusCode.UNAUTHENTICATED
    plain = FocalServer(Settings(port=0, metrics_port=0), engine=engine).start()
    try:
        with client_of(plain, token=None) as client:
            code, details = code_of(lambda: client.search("q"))
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "--data-dir" in details
            code, _ = code_of(lambda: client.compress("q", [], retrieve_top_k=2))
            assert code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        plain.drain()


def test_embedder_change_is_failed_precondition(engine, tmp_path):
    store = IndexStore(tmp_path, Embedder())
    store.upsert("ops", [Document(*DOCUMENTS[0])])
    store.close()
    changed = FocalServer(Settings(port=0, metrics_port=0, data_dir=str(tmp_path), embedder_dim=256),
                          engine=engine).start()
    try:
        with client_of(changed, token=None) as client:
            code, details = code_of(lambda: client.search("canary", namespace="ops"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "384-dim" in details and "256-dim" in details
    finally:
        changed.drain()


def _start(data_dir: Path, port: int) -> ServerProcess:
    server = ServerProcess(port, {"FOCAL_DATA_DIR": str(data_dir), "FOCAL_SNAPSHOT_EVERY": "5",
                                  "FOCAL_LOG_LEVEL": "WARNING"})
    server.start(timeout=120)
    return server


def test_sigkill_loses_no_acknowledged_upsert(tmp_path):
    data_dir, port = tmp_path / "data", free_port()
    acknowledged: dict[str, int] = {}  # document id -> chunks the server acknowledged
    chance = random.Random(7)
    for round_number in range(3):
        server = _start(data_dir, port)
        stop, first_acknowledged = threading.Event(), threading.Event()

        def write(round_number: int = round_number, stop: threading.Event = stop,
                  first_acknowledged: threading.Event = first_acknowledged) -> None:
            with FocalClient(f"127.0.0.1:{port}", timeout=10) as client:
                for batch in range(10_000):
                    if stop.is_set():
                        return
                    docs = [(f"r{round_number}-b{batch}-{i}", f"Round {round_number}, batch {batch}, note {i}. " * (
                        1 + 40 * (i % 3)), {"doc": f"r{round_number}-b{batch}-{i}"}) for i in range(3)]
                    if batch % 4 == 3:  # upsert again: replaces, never repeats
                        docs[0] = (f"r{round_number}-b0-0", "Rewritten note.", {"doc": f"r{round_number}-b0-0"})
                    try:
                        client.upsert(docs, namespace="crash")
                    except grpc.RpcError:
                        return  # the server died: this batch was never acknowledged
                    for doc_id, text, _ in docs:
                        acknowledged[doc_id] = text
                    first_acknowledged.set()

        writer = threading.Thread(target=write)
        writer.start()
        # The kill lands at a random moment of steady writing, however long the first write (embedder load) takes.
        assert first_acknowledged.wait(timeout=120), f"round {round_number}: no upsert acknowledged"
        before = len(acknowledged)
        time.sleep(chance.uniform(1.0, 3.0))
        server.kill()
        stop.set()
        writer.join(timeout=30)
        assert len(acknowledged) > before, f"round {round_number}: the server acknowledged one batch only"
    server = _start(data_dir, port)  # restart: replays the log
    try:
        with FocalClient(f"127.0.0.1:{port}") as client:
            stats = {s.name: s for s in client.stats().namespaces}["crash"]
            assert stats.documents >= len(acknowledged)
            for doc_id in chance.sample(sorted(acknowledged), 10):
                hits = client.search(acknowledged[doc_id][:200], 50, namespace="crash", filter={"doc": doc_id}).hits
                chunks = sorted(h.chunk for h in hits)
                assert chunks == list(range(len(chunks))) and chunks, doc_id  # once each, none missing
                words = " ".join(h.text for h in sorted(hits, key=lambda h: h.chunk)).split()
                assert words == acknowledged[doc_id].split()
    finally:
        server.kill()
    store = IndexStore(data_dir)  # the files themselves: every acknowledged text, exactly as acknowledged
    space = store.namespaces["crash"]
    assert set(acknowledged) <= set(space.documents)
    assert len(space.vectors) == len(space.chunks) == sum(len(e.chunk_ids) for e in space.documents.values())
    for doc_id, text in acknowledged.items():
        chunk_ids = space.documents[doc_id].chunk_ids
        assert " ".join(space.chunks[i][2] for i in chunk_ids).split() == text.split()
    store.close(snapshot=False)
