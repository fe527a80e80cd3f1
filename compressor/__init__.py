"""Focal's compressor: compression methods, retrieval, the gRPC server and the CLI."""
