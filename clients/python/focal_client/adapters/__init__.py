"""Adapters for RAG frameworks, each an optional extra of the client distribution:
``langchain`` (a ``BaseDocumentCompressor``), ``llamaindex`` (a ``BaseNodePostprocessor``) and
``haystack`` (a component). They share ``common``: what is sent, and how Focal's answer becomes
documents again."""
