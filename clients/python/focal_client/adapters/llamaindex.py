"""LlamaIndex: ``FocalPostprocessor``, a ``BaseNodePostprocessor`` (``node_postprocessors=[...]`` of
a query engine, or ``postprocess_nodes`` directly), sync and async.

    from focal_client.adapters.llamaindex import FocalPostprocessor
    engine = index.as_query_engine(node_postprocessors=[FocalPostprocessor(target="localhost:50051", rate=0.3)])

Focal's metadata keys are excluded from what the LLM and the embedder see of a node.
"""

from __future__ import annotations

from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from pydantic import ConfigDict, PrivateAttr

from focal_client.adapters.common import METADATA_KEYS, FocalSettings, kept, usage
from focal_client.client import FocalClient
from focal_client.rpc.focal.compressor.v1 import compressor_pb2 as pb


class FocalPostprocessor(BaseNodePostprocessor):
    """Compresses retrieved nodes with a Focal server; options are ``FocalSettings``'s."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    settings: FocalSettings
    _client: FocalClient | None = PrivateAttr(default=None)

    def __init__(self, settings: FocalSettings | None = None, **options: object) -> None:
        super().__init__(settings=settings or FocalSettings(**options))

    @classmethod
    def class_name(cls) -> str:
        return "FocalPostprocessor"

    @staticmethod
    def _query(nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> str:
        if query_bundle is None:
            raise ValueError("FocalPostprocessor needs the query (query_bundle or query_str)")
        return query_bundle.query_str

    @staticmethod
    def _texts(nodes: list[NodeWithScore]) -> list[str]:
        return [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if not nodes:
            return []
        if self._client is None:
            self._client = self.settings.client()
        reply = self._client.compress(**self.settings.arguments(self._query(nodes, query_bundle), self._texts(nodes)))
        return self._nodes(nodes, reply)

    async def _apostprocess_nodes(self, nodes: list[NodeWithScore],
                                  query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if not nodes:
            return []
        async with self.settings.async_client() as client:
            reply = await client.compress(**self.settings.arguments(self._query(nodes, query_bundle),
                                                                    self._texts(nodes)))
        return self._nodes(nodes, reply)

    def _nodes(self, nodes: list[NodeWithScore], reply: pb.CompressResponse) -> list[NodeWithScore]:
        if self.settings.output == "prompt":
            node = TextNode(text=reply.prompt, metadata=usage(reply))
            node.excluded_llm_metadata_keys = node.excluded_embed_metadata_keys = list(node.metadata)
            return [NodeWithScore(node=node, score=None)]
        out = []
        for k in kept(reply):
            node = nodes[k.index].node.model_copy(deep=True)
            node.set_content(k.text)
            node.metadata.update(k.metadata)
            for excluded in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
                excluded.extend(key for key in METADATA_KEYS if key not in excluded)
            out.append(NodeWithScore(node=node, score=k.relevance))
        return out
