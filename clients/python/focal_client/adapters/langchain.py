"""LangChain: ``FocalCompressor``, a ``BaseDocumentCompressor`` (use it in
``ContextualCompressionRetriever`` or call it directly), sync and async.

    from focal_client.adapters.langchain import FocalCompressor
    compressor = FocalCompressor(target="localhost:50051", rate=0.3)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=your_retriever)
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, PrivateAttr

from focal_client.adapters.common import FocalSettings, kept, usage
from focal_client.client import FocalClient
from focal_client.rpc.focal.compressor.v1 import compressor_pb2 as pb


class FocalCompressor(BaseDocumentCompressor):
    """Compresses retrieved documents with a Focal server; options are ``FocalSettings``'s."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    settings: FocalSettings
    _client: FocalClient | None = PrivateAttr(default=None)

    def __init__(self, settings: FocalSettings | None = None, **options: object) -> None:
        super().__init__(settings=settings or FocalSettings(**options))

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        if not documents:
            return []
        if self._client is None:
            self._client = self.settings.client()
        reply = self._client.compress(**self.settings.arguments(query, [d.page_content for d in documents]))
        return self._documents(documents, reply)

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[Document]:
        if not documents:
            return []
        async with self.settings.async_client() as client:
            reply = await client.compress(**self.settings.arguments(query, [d.page_content for d in documents]))
        return self._documents(documents, reply)

    def _documents(self, documents: Sequence[Document], reply: pb.CompressResponse) -> list[Document]:
        if self.settings.output == "prompt":
            return [Document(page_content=reply.prompt, metadata=usage(reply))]
        return [Document(page_content=k.text, metadata={**documents[k.index].metadata, **k.metadata},
                         id=documents[k.index].id) for k in kept(reply)]
