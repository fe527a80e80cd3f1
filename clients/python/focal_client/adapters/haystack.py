"""Haystack: ``FocalDocumentCompressor``, a component taking ``documents`` and a ``query`` and
returning the kept ``documents`` and the assembled ``prompt``; ``run`` and ``run_async``.

    from focal_client.adapters.haystack import FocalDocumentCompressor
    pipeline.add_component("compressor", FocalDocumentCompressor(target="localhost:50051", rate=0.3))
    pipeline.connect("retriever.documents", "compressor.documents")
"""

from __future__ import annotations

from dataclasses import asdict, replace

from haystack import Document, component, default_from_dict, default_to_dict

from focal_client.adapters.common import FocalSettings, kept, usage
from focal_client.client import FocalClient
from focal_client.rpc.focal.compressor.v1 import compressor_pb2 as pb


@component
class FocalDocumentCompressor:
    """Compresses retrieved documents with a Focal server; options are ``FocalSettings``'s."""

    def __init__(self, **options: object) -> None:
        self.settings = FocalSettings(**options)
        self._client: FocalClient | None = None

    def to_dict(self) -> dict:
        return default_to_dict(self, **{k: str(v) if k in ("root_ca", "client_cert", "client_key") and v else v
                                        for k, v in asdict(self.settings).items()})

    @classmethod
    def from_dict(cls, data: dict) -> FocalDocumentCompressor:
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document], prompt=str)
    def run(self, documents: list[Document], query: str) -> dict[str, object]:
        if not documents:
            return {"documents": [], "prompt": ""}
        if self._client is None:
            self._client = self.settings.client()
        reply = self._client.compress(**self.settings.arguments(query, [d.content or "" for d in documents]))
        return self._output(documents, reply)

    @component.output_types(documents=list[Document], prompt=str)
    async def run_async(self, documents: list[Document], query: str) -> dict[str, object]:
        if not documents:
            return {"documents": [], "prompt": ""}
        async with self.settings.async_client() as client:
            reply = await client.compress(**self.settings.arguments(query, [d.content or "" for d in documents]))
        return self._output(documents, reply)

    def _output(self, documents: list[Document], reply: pb.CompressResponse) -> dict[str, object]:
        if self.settings.output == "prompt":
            return {"documents": [Document(content=reply.prompt, meta=usage(reply))], "prompt": reply.prompt}
        out = [replace(documents[k.index], content=k.text, meta={**documents[k.index].meta, **k.metadata},
                       score=k.relevance) for k in kept(reply)]
        return {"documents": out, "prompt": reply.prompt}
