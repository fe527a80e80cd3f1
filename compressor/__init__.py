"""Focal's compressor, by part (imports run one way: cli -> service -> {compression, retrieval} -> engine).

- ``compression``: the compression pipeline (ranking, budget, units) and its request/result types.
- ``retrieval``: the durable document index (write-ahead log, FAISS vectors, embedder, chunker).
- ``service``: the gRPC server, its handlers, scheduler, settings, metrics, auth and logging.
- ``cli``: the ``focal`` command line, one module per command family.
- ``text``: cutting text into words, sentences and code lines (shared by compression and retrieval).
- ``client``: a small Python client of the service; ``rpc``: the generated gRPC stubs.
"""
