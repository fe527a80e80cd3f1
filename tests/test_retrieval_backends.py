"""One behavioural suite, run on both retrieval backends: the embedded FAISS store on a real data
directory, and Milvus, on two real servers the fixtures start, each spoken to over gRPC as a
cluster would be: Milvus Lite (the pure-Python engine) and the Milvus standalone server itself
(2.3.5, Go and C++). Then what only a shared backend can do, on both servers: two Focal servers on
one Milvus see each other's writes, and an acknowledged write survives a SIGKILL of the Focal
server."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import grpc
import pytest
from test_index import RIVERS

from compressor.client import FocalClient
from compressor.embedding import Embedder
from compressor.retrieval.contract import Document
from compressor.retrieval.errors import BackendUnavailable, EmbedderMismatch, IndexInputError, NamespaceNotFound
from compressor.retrieval.milvus import MilvusConfig, MilvusStore, collection_name, match_expression
from compressor.retrieval.store import IndexStore
from compressor.service.server import FocalServer
from compressor.service.settings import Settings
from devtools.milvus_server import MilvusLite, MilvusStandalone
from devtools.ports import free_port
from devtools.server_process import ServerProcess


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def milvus_lite(tmp_path_factory):
    server = MilvusLite(tmp_path_factory.mktemp("milvus"), tmp_path_factory.mktemp("milvus-log") / "log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def milvus_standalone(tmp_path_factory):
    server = MilvusStandalone(tmp_path_factory.mktemp("milvus-standalone")).start()
    yield server
    server.stop()


@pytest.fixture(params=["milvus_lite", "milvus_standalone"])
def milvus(request):
    """Each Milvus server in turn (started once per module)."""
    return request.getfixturevalue(request.param)


def _clear(uri: str) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    for table in client.list_collections():
        client.drop_collection(table)
    client.close()


@pytest.fixture(params=["faiss", "milvus_lite", "milvus_standalone"])
def open_store(request, tmp_path):
    """Opens a store of the parametrised backend with a given embedder; opening one closes the one
    opened before (a data directory has one owner), and the last is closed, and the Milvus
    collections dropped, after the test."""
    opened = []

    def opener(embedder: Embedder):
        while opened:
            opened.pop().close()
        if request.param == "faiss":
            store = IndexStore(tmp_path / "data", embedder, snapshot_every=3)
        else:
            store = MilvusStore(MilvusConfig(request.getfixturevalue(request.param).uri), embedder)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()
    if request.param != "faiss":
        _clear(request.getfixturevalue(request.param).uri)


def test_upsert_search_filter_delete(open_store, embedder) -> None:
    store = open_store(embedder)
    assert store.upsert("wiki", RIVERS) == (4, 4)
    hits = store.search("wiki", "Which river flows through Paris?", 2)
    assert hits[0].document_id == "seine" and hits[0].score > hits[1].score
    assert hits[0].metadata == {"lang": "en", "kind": "river"} and hits[0].id == "seine#0"
    german = store.search("wiki", "Which river flows through Paris?", 3, {"lang": "de"})
    assert [h.document_id for h in german] == ["tiber"]
    assert store.search("wiki", "river", 3, {"lang": "en", "kind": "mountain"})[0].document_id == "alps"
    assert store.search("wiki", "river", 3, {"lang": "fr"}) == []
    assert store.delete("wiki", ["seine", "nonexistent"]) == 1
    assert "seine" not in [h.document_id for h in store.search("wiki", "Which river flows through Paris?", 4)]
    stats = store.stats()["namespaces"]["wiki"]
    assert (stats["documents"], stats["chunks"], stats["dim"]) == (3, 3, 384)


def test_scores_are_the_same_cosine_on_both(open_store, embedder) -> None:
    store = open_store(embedder)
    store.upsert("wiki", RIVERS)
    query = "Which river flows through Paris?"
    vectors = embedder.embed([query, *(d.text for d in RIVERS)])
    expected = sorted(((float(vectors[i + 1] @ vectors[0]), d.id) for i, d in enumerate(RIVERS)), reverse=True)
    hits = store.search("wiki", query, 4)
    assert [h.document_id for h in hits] == [d for _, d in expected]
    assert [h.score for h in hits] == pytest.approx([s for s, _ in expected], abs=1e-5)


def test_upsert_replaces_a_document_with_the_same_id(open_store, embedder) -> None:
    store = open_store(embedder)
    store.upsert("wiki", [Document("seine", "The Seine is a river in France. " * 80, {"lang": "fr"})])
    long_chunks = store.stats()["namespaces"]["wiki"]["chunks"]
    assert long_chunks > 1
    store.upsert("wiki", RIVERS)  # the shorter seine replaces the long one: its extra chunks go
    stats = store.stats()["namespaces"]["wiki"]
    assert (stats["documents"], stats["chunks"]) == (4, 4)
    seine = store.search("wiki", "river in France", 10, {"lang": "en", "kind": "river"})
    assert sorted(h.id for h in seine) == ["danube#0", "seine#0"]


def test_namespaces_are_separate(open_store, embedder) -> None:
    store = open_store(embedder)
    store.upsert("a", RIVERS[:1])
    store.upsert("b.c-d", RIVERS[3:])
    assert [h.document_id for h in store.search("a", "mountain", 5)] == ["seine"]
    assert [h.document_id for h in store.search("b.c-d", "river", 5)] == ["alps"]
    with pytest.raises(NamespaceNotFound, match="'c' does not exist"):
        store.search("c", "river", 5)
    with pytest.raises(NamespaceNotFound):
        store.delete("c", ["seine"])
    assert set(store.stats()["namespaces"]) == {"a", "b.c-d"}


def test_filters_match_values_exactly_whatever_they_hold(open_store, embedder) -> None:
    store = open_store(embedder)
    odd = {"path": 'C:\\docs\\"quoted" and \'single\'', "kind": "river"}
    store.upsert("wiki", [Document("odd", "The Loire is the longest river in France.", odd), *RIVERS])
    assert [h.document_id for h in store.search("wiki", "river", 5, {"path": odd["path"]})] == ["odd"]
    assert store.search("wiki", "river", 5, {"path": 'C:\\docs\\"quoted"'}) == []
    assert store.search("wiki", "river", 5, {"path": 'x" or metadata["kind"] == "river'}) == []


def test_bad_input_names_the_field(open_store, embedder) -> None:
    store = open_store(embedder)
    store.upsert("wiki", RIVERS[:1])
    cases = [
        (lambda: store.upsert("wiki", [Document("x", "  ")]), "documents[0].text: is empty"),
        (lambda: store.upsert("wiki", [Document("", "text")]), "documents[0].id: is empty"),
        (lambda: store.upsert("wiki", [Document("x", "a"), Document("x", "b")]), "documents[1].id: duplicate"),
        (lambda: store.upsert("wiki", [Document("x", "a" * 1_000_001)]), "exceed the limit of 1000000"),
        (lambda: store.upsert("wiki", []), "documents: at least one"),
        (lambda: store.upsert("bad name!", RIVERS[:1]), "namespace: 'bad name!' is not a valid name"),
        (lambda: store.search("wiki", "", 3), "query: is empty"),
        (lambda: store.search("wiki", "river", 0), "top_k: must be in 1..1000"),
        (lambda: store.delete("wiki", []), "ids: at least one"),
    ]
    for call, message in cases:
        with pytest.raises(IndexInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
            call()
    assert store.stats()["namespaces"]["wiki"]["documents"] == 1  # nothing half-written


def test_a_namespace_keeps_its_embedder(open_store, embedder) -> None:
    store = open_store(embedder)
    store.upsert("wiki", RIVERS)
    smaller = open_store(Embedder(dim=128))
    with pytest.raises(EmbedderMismatch, match=r"384-dim vectors\); this server embeds with all-MiniLM-L6-v2@128"):
        smaller.search("wiki", "Paris", 1)
    with pytest.raises(EmbedderMismatch):
        smaller.upsert("wiki", RIVERS[:1])
    assert smaller.upsert("small", RIVERS) == (4, 4)  # a new namespace takes the new embedder
    assert smaller.search("small", "Which river flows through Paris?", 1)[0].document_id == "seine"


def test_milvus_names_and_expressions():
    assert collection_name("b.c-d").startswith("focal_b_c_d_") and collection_name("b.c-d") != collection_name("b_c_d")
    assert match_expression({"k": 'a"b'}) == 'metadata["k"] == "a\\"b"'


def test_an_unreachable_milvus_is_unavailable(embedder) -> None:
    with pytest.raises(BackendUnavailable, match=r"Milvus at http://127\.0\.0\.1:\d+"):
        MilvusStore(MilvusConfig(f"http://127.0.0.1:{free_port()}", timeout=3), embedder)


def test_two_focal_servers_on_one_milvus_see_each_others_writes(engine, milvus) -> None:
    settings = Settings(port=0, metrics_port=0, retrieval_backend="milvus", milvus_uri=milvus.uri)
    first, second = FocalServer(settings, engine=engine).start(), FocalServer(settings, engine=engine).start()
    try:
        with FocalClient(f"127.0.0.1:{first.port}") as one, FocalClient(f"127.0.0.1:{second.port}") as two:
            one.upsert([(d.id, d.text, d.metadata) for d in RIVERS], namespace="shared")
            assert two.search("Which river flows through Paris?", 1, namespace="shared").hits[0].document_id == "seine"
            assert two.delete(["seine"], namespace="shared").deleted == 1
            assert "seine" not in {h.document_id for h in one.search("Paris", 4, namespace="shared").hits}
            reply = one.compress("Which river flows through Vienna?", [], rate=0.9, retrieve_top_k=2,
                                 namespace="shared")
            assert reply.chunks[0].id == "danube#0"
            stats = {s.name: s for s in two.stats().namespaces}["shared"]
            assert (stats.documents, stats.chunks) == (3, 3) and two.stats().index_type == "milvus"
            with pytest.raises(grpc.RpcError) as missing:
                two.search("river", 1, namespace="nowhere")
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        first.drain()
        second.drain()
        _clear(milvus.uri)


def test_sigkill_of_focal_loses_no_acknowledged_upsert_in_milvus(milvus, tmp_path: Path) -> None:
    port = free_port()
    settings = {"FOCAL_RETRIEVAL_BACKEND": "milvus", "FOCAL_MILVUS_URI": milvus.uri}
    acknowledged: dict[str, str] = {}
    server = ServerProcess(port, settings, tmp_path / "focal.log")
    server.start()
    stop, first = threading.Event(), threading.Event()

    def write() -> None:
        with FocalClient(f"127.0.0.1:{port}", timeout=10) as client:
            for batch in range(10_000):
                if stop.is_set():
                    return
                docs = [(f"b{batch}-{i}", f"Batch {batch}, note {i}. " * (1 + 30 * (i % 2)), {"doc": f"b{batch}-{i}"})
                        for i in range(3)]
                try:
                    client.upsert(docs, namespace="crash")
                except grpc.RpcError:
                    return  # the server died: this batch was never acknowledged
                acknowledged.update({doc_id: text for doc_id, text, _ in docs})
                first.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert first.wait(timeout=120), "no upsert acknowledged"
        time.sleep(random.Random(3).uniform(1.0, 2.0))
        server.kill()
        stop.set()
        writer.join(timeout=30)
    finally:
        server.kill()
    store = MilvusStore(MilvusConfig(milvus.uri), Embedder())  # Milvus itself: every acknowledged text
    try:
        assert store.stats()["namespaces"]["crash"]["documents"] >= len(acknowledged) > 0
        for doc_id in random.Random(5).sample(sorted(acknowledged), min(10, len(acknowledged))):
            hits = store.search("crash", acknowledged[doc_id][:200], 50, {"doc": doc_id})
            chunks = sorted(h.chunk for h in hits)
            assert chunks == list(range(len(chunks))) and chunks, doc_id
            words = " ".join(h.text for h in sorted(hits, key=lambda h: h.chunk)).split()
            assert words == acknowledged[doc_id].split()
    finally:
        store.close()
        _clear(milvus.uri)
