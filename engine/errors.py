"""Exceptions raised while loading a model: each names the file, field or tensor at fault."""


class EngineError(Exception):
    """Base class for every error the engine raises on purpose."""


class ConfigError(EngineError):
    """A model configuration is unknown, incomplete or inconsistent."""


class WeightsError(EngineError):
    """A checkpoint is unreadable, or its tensors do not match the configuration."""


class TokenizerError(EngineError):
    """A tokenizer could not be built from the files or metadata given."""
