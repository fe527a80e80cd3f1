"""In-service retrieval: a durable, namespaced FAISS index of chunked, embedded documents.

faiss and the embedder are imported by ``store``, ``vectors`` and ``embedder`` only, so the
service can map this package's ``errors`` without them installed.
"""
