from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    METHOD_TOKEN: _ClassVar[Method]
    METHOD_SENTENCE: _ClassVar[Method]
    METHOD_CHUNK: _ClassVar[Method]
    METHOD_DIGEST: _ClassVar[Method]

class Reorder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REORDER_UNSPECIFIED: _ClassVar[Reorder]
    REORDER_ORIGINAL: _ClassVar[Reorder]
    REORDER_RELEVANCE: _ClassVar[Reorder]
    REORDER_EDGES: _ClassVar[Reorder]
METHOD_UNSPECIFIED: Method
METHOD_TOKEN: Method
METHOD_SENTENCE: Method
METHOD_CHUNK: Method
METHOD_DIGEST: Method
REORDER_UNSPECIFIED: Reorder
REORDER_ORIGINAL: Reorder
REORDER_RELEVANCE: Reorder
REORDER_EDGES: Reorder

class Chunk(_message.Message):
    __slots__ = ("id", "text", "score", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    score: float
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Options(_message.Message):
    __slots__ = ("force_tokens", "reorder", "instruction", "separator", "include_question")
    FORCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REORDER_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    SEPARATOR_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_QUESTION_FIELD_NUMBER: _ClassVar[int]
    force_tokens: _containers.RepeatedScalarFieldContainer[str]
    reorder: Reorder
    instruction: str
    separator: str
    include_question: bool
    def __init__(self, force_tokens: _Optional[_Iterable[str]] = ..., reorder: _Optional[_Union[Reorder, str]] = ..., instruction: _Optional[str] = ..., separator: _Optional[str] = ..., include_question: _Optional[bool] = ...) -> None: ...

class CompressRequest(_message.Message):
    __slots__ = ("query", "chunks", "rate", "target_tokens", "adaptive", "method", "options", "retrieve_top_k", "namespace", "filter", "budget_tokenizer")
    class FilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    QUERY_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    RETRIEVE_TOP_K_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    BUDGET_TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    query: str
    chunks: _containers.RepeatedCompositeFieldContainer[Chunk]
    rate: float
    target_tokens: int
    adaptive: AdaptiveBudget
    method: Method
    options: Options
    retrieve_top_k: int
    namespace: str
    filter: _containers.ScalarMap[str, str]
    budget_tokenizer: str
    def __init__(self, query: _Optional[str] = ..., chunks: _Optional[_Iterable[_Union[Chunk, _Mapping]]] = ..., rate: _Optional[float] = ..., target_tokens: _Optional[int] = ..., adaptive: _Optional[_Union[AdaptiveBudget, _Mapping]] = ..., method: _Optional[_Union[Method, str]] = ..., options: _Optional[_Union[Options, _Mapping]] = ..., retrieve_top_k: _Optional[int] = ..., namespace: _Optional[str] = ..., filter: _Optional[_Mapping[str, str]] = ..., budget_tokenizer: _Optional[str] = ...) -> None: ...

class AdaptiveBudget(_message.Message):
    __slots__ = ("max_tokens",)
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    def __init__(self, max_tokens: _Optional[int] = ...) -> None: ...

class ChunkResult(_message.Message):
    __slots__ = ("id", "kept_text", "original_tokens", "kept_tokens", "relevance", "rank", "duplicate_of")
    ID_FIELD_NUMBER: _ClassVar[int]
    KEPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KEPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RELEVANCE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_OF_FIELD_NUMBER: _ClassVar[int]
    id: str
    kept_text: str
    original_tokens: int
    kept_tokens: int
    relevance: float
    rank: int
    duplicate_of: str
    def __init__(self, id: _Optional[str] = ..., kept_text: _Optional[str] = ..., original_tokens: _Optional[int] = ..., kept_tokens: _Optional[int] = ..., relevance: _Optional[float] = ..., rank: _Optional[int] = ..., duplicate_of: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("tokenizer", "original_tokens", "compressed_tokens", "prompt_tokens", "target_tokens", "ratio")
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TARGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    tokenizer: str
    original_tokens: int
    compressed_tokens: int
    prompt_tokens: int
    target_tokens: int
    ratio: float
    def __init__(self, tokenizer: _Optional[str] = ..., original_tokens: _Optional[int] = ..., compressed_tokens: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., target_tokens: _Optional[int] = ..., ratio: _Optional[float] = ...) -> None: ...

class CompressResponse(_message.Message):
    __slots__ = ("prompt", "chunks", "usage", "timings_ms", "request_id", "model", "digest", "digest_finish")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FINISH_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkResult]
    usage: Usage
    timings_ms: _containers.ScalarMap[str, float]
    request_id: str
    model: str
    digest: _containers.RepeatedCompositeFieldContainer[DigestSentence]
    digest_finish: str
    def __init__(self, prompt: _Optional[str] = ..., chunks: _Optional[_Iterable[_Union[ChunkResult, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., request_id: _Optional[str] = ..., model: _Optional[str] = ..., digest: _Optional[_Iterable[_Union[DigestSentence, _Mapping]]] = ..., digest_finish: _Optional[str] = ...) -> None: ...

class DigestSentence(_message.Message):
    __slots__ = ("text", "chunk_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    chunk_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, text: _Optional[str] = ..., chunk_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "text", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("namespace", "documents")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    def __init__(self, namespace: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("documents", "chunks")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    documents: int
    chunks: int
    def __init__(self, documents: _Optional[int] = ..., chunks: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("namespace", "ids")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("namespace", "query", "top_k", "filter")
    class FilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    query: str
    top_k: int
    filter: _containers.ScalarMap[str, str]
    def __init__(self, namespace: _Optional[str] = ..., query: _Optional[str] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("document_id", "chunk", "text", "score", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    chunk: int
    text: str
    score: float
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, document_id: _Optional[str] = ..., chunk: _Optional[int] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NamespaceStats(_message.Message):
    __slots__ = ("name", "documents", "chunks", "dim", "embedder")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    name: str
    documents: int
    chunks: int
    dim: int
    embedder: str
    def __init__(self, name: _Optional[str] = ..., documents: _Optional[int] = ..., chunks: _Optional[int] = ..., dim: _Optional[int] = ..., embedder: _Optional[str] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("namespaces", "embedder", "index_type", "log_bytes")
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    LOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceStats]
    embedder: str
    index_type: str
    log_bytes: int
    def __init__(self, namespaces: _Optional[_Iterable[_Union[NamespaceStats, _Mapping]]] = ..., embedder: _Optional[str] = ..., index_type: _Optional[str] = ..., log_bytes: _Optional[int] = ...) -> None: ...
