"""The engine's exceptions: loading errors name the file, field or tensor at fault."""


class EngineError(Exception):
    """Base class for every error the engine raises on purpose."""


class ConfigError(EngineError):
    """A model configuration is unknown, incomplete or inconsistent."""


class WeightsError(EngineError):
    """A checkpoint is unreadable, or its tensors do not match the configuration."""


class TokenizerError(EngineError):
    """A tokenizer could not be built from the files or metadata given."""


class Interrupted(EngineError):
    """The caller's stop check turned true between two batches or prefill chunks; the work was dropped."""
