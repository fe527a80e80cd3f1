"""Focal's inference engine: Mellum2 and its dense relatives in PyTorch.

Knows nothing about compression or gRPC. Entry point: :class:`engine.api.Engine`.
"""

from engine.api import Engine, Generation, TokenScores
from engine.config import ModelConfig, from_hf_dict
from engine.errors import ConfigError, EngineError, TokenizerError, WeightsError
from engine.loader import default_model_path, load

__all__ = [
    "ConfigError",
    "Engine",
    "EngineError",
    "Generation",
    "ModelConfig",
    "TokenScores",
    "TokenizerError",
    "WeightsError",
    "default_model_path",
    "from_hf_dict",
    "load",
]
