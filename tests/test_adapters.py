"""The client's framework adapters against the real frameworks and a real Focal server on loopback:
LangChain's ContextualCompressionRetriever, LlamaIndex's postprocessor protocol, a Haystack
pipeline; sync and async; metadata kept, Focal's added, dropped documents gone."""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # no network from the tests

import pytest
from focal_client.adapters.common import METADATA_KEYS, FocalSettings
from test_service import SAMPLE, Running

QUESTION = SAMPLE["question"]
SOURCES = [(c["title"], c["text"]) for c in SAMPLE["chunks"]]
DUPLICATE = SOURCES[0]


@pytest.fixture(scope="module")
def server(engine):
    running = Running(engine, queue_depth=40)
    yield running
    running.server.drain()


def check(texts: list[str], metadata: list[dict], titles: list[str]) -> None:
    """Shared expectations: the answer survives, something was dropped (the duplicate at least),
    the caller's metadata is kept beside Focal's, most relevant first."""
    assert len(texts) < len(SOURCES) + 1 and any("15 minutes" in t for t in texts)
    assert all(set(METADATA_KEYS) <= set(m) for m in metadata)
    assert all(m["source"] == title for m, title in zip(metadata, titles))
    assert [m["focal_rank"] for m in metadata] == sorted(m["focal_rank"] for m in metadata)
    assert all(0 < m["focal_kept_tokens"] <= m["focal_original_tokens"] for m in metadata)
    assert titles.count(DUPLICATE[0]) <= 1


def test_langchain_contextual_compression_retriever(server):
    from focal_client.adapters.langchain import FocalCompressor
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    class Retrieved(BaseRetriever):
        """Returns the sample's chunks (and one duplicate) as a retriever would."""

        def _get_relevant_documents(self, query: str, *, run_manager=None) -> list[Document]:
            return [Document(page_content=text, metadata={"source": title}, id=f"doc-{i}")
                    for i, (title, text) in enumerate([*SOURCES, DUPLICATE])]

    compressor = FocalCompressor(target=server.target, rate=0.4)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=Retrieved())
    documents = retriever.invoke(QUESTION)
    check([d.page_content for d in documents], [d.metadata for d in documents],
          [d.metadata["source"] for d in documents])
    assert all(d.id.startswith("doc-") for d in documents)
    again = asyncio.run(retriever.ainvoke(QUESTION))
    assert [d.page_content for d in again] == [d.page_content for d in documents]
    prompt = FocalCompressor(target=server.target, rate=0.4, output="prompt").compress_documents(
        Retrieved().invoke(QUESTION), QUESTION)
    assert len(prompt) == 1 and "15 minutes" in prompt[0].page_content
    assert prompt[0].metadata["focal_compressed_tokens"] > 0


def test_llamaindex_postprocessor(server):
    from focal_client.adapters.llamaindex import FocalPostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

    nodes = [NodeWithScore(node=TextNode(text=text, metadata={"source": title}, id_=f"node-{i}"), score=1.0 - i / 10)
             for i, (title, text) in enumerate([*SOURCES, DUPLICATE])]
    postprocessor = FocalPostprocessor(target=server.target, rate=0.4)
    kept = postprocessor.postprocess_nodes(nodes, query_str=QUESTION)
    check([n.node.get_content() for n in kept], [n.node.metadata for n in kept],
          [n.node.metadata["source"] for n in kept])
    assert all(n.node.node_id.startswith("node-") and n.score == n.node.metadata["focal_relevance"] for n in kept)
    assert "focal_rank" not in kept[0].node.get_content(metadata_mode=MetadataMode.LLM)  # the LLM never sees ours
    assert "source" in kept[0].node.get_content(metadata_mode=MetadataMode.LLM)  # but still sees the caller's
    assert nodes[0].node.get_content() == SOURCES[0][1]  # the caller's nodes are untouched
    again = asyncio.run(postprocessor.apostprocess_nodes(nodes, query_str=QUESTION))
    assert [n.node.get_content() for n in again] == [n.node.get_content() for n in kept]
    with pytest.raises(ValueError, match="needs the query"):
        postprocessor.postprocess_nodes(nodes)


def test_haystack_pipeline(server):
    from focal_client.adapters.haystack import FocalDocumentCompressor
    from haystack import Document, Pipeline
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    store = InMemoryDocumentStore()
    store.write_documents([Document(content=text, meta={"source": title}) for title, text in SOURCES])
    pipeline = Pipeline()
    pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=len(SOURCES)))
    pipeline.add_component("compressor", FocalDocumentCompressor(target=server.target, rate=0.4))
    pipeline.connect("retriever.documents", "compressor.documents")
    out = pipeline.run({"retriever": {"query": QUESTION}, "compressor": {"query": QUESTION}})["compressor"]
    documents = out["documents"]
    check([d.content for d in documents], [d.meta for d in documents], [d.meta["source"] for d in documents])
    assert "15 minutes" in out["prompt"]
    component = FocalDocumentCompressor.from_dict(FocalDocumentCompressor(target=server.target, rate=0.4).to_dict())
    given = [Document(content=text, meta={"source": title}) for title, text in [*SOURCES, DUPLICATE]]
    again = asyncio.run(component.run_async(documents=given, query=QUESTION))
    check([d.content for d in again["documents"]], [d.meta for d in again["documents"]],
          [d.meta["source"] for d in again["documents"]])


def test_settings_refuse_typos():
    with pytest.raises(ValueError, match="unknown output 'prompts'"):
        FocalSettings(output="prompts")
    with pytest.raises(TypeError):
        FocalSettings(rates=0.5)
