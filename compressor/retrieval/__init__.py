"""In-service retrieval: a durable, namespaced FAISS index of chunked, embedded documents.

faiss and the embedder (``compressor.embedding``) are imported by ``store`` and ``vectors`` only, so the
service can map this package's ``errors`` without them installed.
"""
