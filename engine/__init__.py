"""Focal's inference engine: Mellum2 and its dense relatives in PyTorch.

Knows nothing about compression or gRPC. Entry point: :class:`engine.api.Engine`.

oneDNN (torch's CPU matmuls) compiles a kernel for every new matrix shape and keeps 1024 of them.
Expert slices have a different row count in nearly every call, so a forward of the Mellum2 slice
needs hundreds of shapes and the default cache thrashes, recompiling kernels in every forward. A
larger cache (read when oneDNN first runs; an operator's own ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``
wins) keeps every shape once seen.
"""

import os

os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")


from engine.api import Engine, EngineOptions, Generation, TokenScores
from engine.config import ModelConfig, from_hf_dict
from engine.decoding import Speculation
from engine.drafting import Drafter, PromptLookup
from engine.errors import ConfigError, EngineError, Interrupted, TokenizerError, WeightsError
from engine.loader import default_model_path, load

__all__ = [
    "ConfigError",
    "Drafter",
    "Engine",
    "EngineError",
    "EngineOptions",
    "Generation",
    "Interrupted",
    "ModelConfig",
    "PromptLookup",
    "Speculation",
    "TokenScores",
    "TokenizerError",
    "WeightsError",
    "default_model_path",
    "from_hf_dict",
    "load",
]
