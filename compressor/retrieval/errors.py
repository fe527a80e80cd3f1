"""Errors of the retrieval index (importable without faiss, so the server maps them either way)."""

from __future__ import annotations


class IndexInputError(ValueError):
    """A malformed index request; ``field`` names the part at fault (INVALID_ARGUMENT)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NamespaceNotFound(KeyError):
    def __str__(self) -> str:
        return f"namespace {self.args[0]!r} does not exist (it is created by the first Upsert into it)"


class EmbedderMismatch(Exception):
    """A namespace was indexed with another embedder than the one configured (FAILED_PRECONDITION)."""


class IndexCorrupt(Exception):
    """The data directory cannot be opened as it is; the message says what the operator can do."""


class BackendUnavailable(Exception):
    """The retrieval database could not be reached or refused the call (UNAVAILABLE: a retry may work)."""
