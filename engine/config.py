"""Model configuration: one dataclass for Mellum2 and its dense relatives.

Field names follow Hugging Face ``config.json`` so that a checkpoint's config reads straight in.
``from_hf_dict`` validates everything the model needs and raises ``ConfigError`` naming the
field at fault; derived facts (which layers slide, which are sparse) are fixed here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import ConfigError

FULL = "full_attention"
SLIDING = "sliding_attention"
DENSE = "dense"
SPARSE = "sparse"

SUPPORTED_MODEL_TYPES = ("mellum", "llama", "qwen3", "qwen3_moe")
SUPPORTED_ROPE_TYPES = ("default", "yarn")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one layer type (``default`` or ``yarn``)."""

    rope_type: str
    theta: float
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder needs; built by :func:`from_hf_dict` or from GGUF metadata."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    layer_types: tuple[str, ...]
    mlp_layer_types: tuple[str, ...]
    rope: dict[str, RopeConfig]
    sliding_window: int | None = None
    qk_norm: bool = False
    attention_bias: bool = False
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        n = self.num_hidden_layers
        positive = (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"config field 'num_attention_heads' ({self.num_attention_heads}) must be a multiple of "
                f"'num_key_value_heads' ({self.num_key_value_heads})"
            )
        if len(self.layer_types) != n:
            raise ConfigError(f"config field 'layer_types' has {len(self.layer_types)} entries, expected {n}")
        if len(self.mlp_layer_types) != n:
            raise ConfigError(f"config field 'mlp_layer_types' has {len(self.mlp_layer_types)} entries, expected {n}")
        for kind in self.layer_types:
            if kind not in (FULL, SLIDING):
                raise ConfigError(f"config field 'layer_types' has unknown entry {kind!r}")
            if kind not in self.rope:
                raise ConfigError(f"config field 'rope_parameters' has no entry for layer type {kind!r}")
        for kind in self.mlp_layer_types:
            if kind not in (DENSE, SPARSE):
                raise ConfigError(f"config field 'mlp_layer_types' has unknown entry {kind!r}")
        if SLIDING in self.layer_types and (self.sliding_window is None or self.sliding_window <= 0):
            raise ConfigError("config field 'sliding_window' must be a positive integer when a layer slides")
        if DENSE in self.mlp_layer_types and self.intermediate_size <= 0:
            raise ConfigError("config field 'intermediate_size' must be positive when a layer is dense")
        if SPARSE in self.mlp_layer_types:
            if self.num_experts <= 0 or self.moe_intermediate_size <= 0:
                raise ConfigError("config fields 'num_experts' and 'moe_intermediate_size' must be positive for MoE")
            if not 0 < self.num_experts_per_tok <= self.num_experts:
                raise ConfigError(
                    f"config field 'num_experts_per_tok' must be in 1..{self.num_experts}, "
                    f"got {self.num_experts_per_tok}"
                )
        for kind, rope in self.rope.items():
            if rope.rope_type not in SUPPORTED_ROPE_TYPES:
                raise ConfigError(
                    f"config field 'rope_parameters[{kind}].rope_type' is {rope.rope_type!r}; "
                    f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
                )
            if rope.rope_type == "yarn" and not rope.original_max_position_embeddings:
                raise ConfigError(
                    f"config field 'rope_parameters[{kind}].original_max_position_embeddings' is required for yarn"
                )

    @property
    def num_sparse_layers(self) -> int:
        return sum(kind == SPARSE for kind in self.mlp_layer_types)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of K and V one layer stores for one position."""
        return 2 * self.num_key_value_heads * self.head_dim * dtype_bytes

    def kv_cache_bytes(self, positions: int, dtype_bytes: int) -> int:
        """Bytes of K and V a cache holds at ``positions`` positions when sized exactly: full layers
        keep every position, sliding layers a ring of ``sliding_window``."""
        sliding = sum(kind == SLIDING for kind in self.layer_types)
        held = (self.num_hidden_layers - sliding) * positions + sliding * (self.sliding_window or 0)
        return held * self.kv_bytes_per_token(dtype_bytes)


def _require(d: dict[str, Any], name: str) -> Any:
    if name not in d or d[name] is None:
        raise ConfigError(f"config is missing required field '{name}'")
    return d[name]


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope_from_dict(params: dict[str, Any], where: str) -> RopeConfig:
    if not isinstance(params, dict):
        raise ConfigError(f"config field '{where}' must be an object, got {type(params).__name__}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta")
    if theta is None:
        raise ConfigError(f"config field '{where}.rope_theta' is missing")
    return RopeConfig(
        rope_type=rope_type,
        theta=float(theta),
        factor=float(params.get("factor") or 1.0),
        original_max_position_embeddings=params.get("original_max_position_embeddings"),
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
        attention_factor=params.get("attention_factor"),
        mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"),
        truncate=bool(params.get("truncate", True)),
    )


def _single_rope(d: dict[str, Any]) -> RopeConfig:
    """One RoPE for every layer: ``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling``."""
    if isinstance(d.get("rope_parameters"), dict) and "rope_theta" in d["rope_parameters"]:
        return _rope_from_dict(d["rope_parameters"], "rope_parameters")
    params = dict(d.get("rope_scaling") or {})
    params["rope_theta"] = d.get("rope_theta", 10000.0)
    return _rope_from_dict(params, "rope_scaling")


def _common(d: dict[str, Any]) -> dict[str, Any]:
    heads = int(_require(d, "num_attention_heads"))
    hidden = int(_require(d, "hidden_size"))
    return dict(
        model_type=d["model_type"],
        vocab_size=int(_require(d, "vocab_size")),
        hidden_size=hidden,
        num_hidden_layers=int(_require(d, "num_hidden_layers")),
        num_attention_heads=heads,
        num_key_value_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or hidden // heads),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
        attention_bias=bool(d.get("attention_bias", False)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        bos_token_id=d.get("bos_token_id"),
        eos_token_ids=_eos_ids(d.get("eos_token_id")),
    )


def _num_experts(d: dict[str, Any]) -> int:
    """transformers writes ``num_local_experts`` for what config files call ``num_experts``."""
    return int(d.get("num_experts") or d.get("num_local_experts") or 0)


def _check_act(d: dict[str, Any]) -> None:
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"config field 'hidden_act' is {act!r}; only 'silu' (SwiGLU) is supported")


def _mellum(d: dict[str, Any]) -> ModelConfig:
    common = _common(d)
    n = common["num_hidden_layers"]
    layer_types = tuple(d.get("layer_types") or [FULL] * n)
    rope_params = d.get("rope_parameters")
    if rope_params is None:
        rope = {FULL: RopeConfig("default", 500000.0), SLIDING: RopeConfig("default", 10000.0)}
    else:
        if not isinstance(rope_params, dict):
            raise ConfigError("config field 'rope_parameters' must be an object keyed by layer type")
        rope = {kind: _rope_from_dict(rope_params[kind], f"rope_parameters[{kind}]")
                for kind in set(layer_types) if kind in rope_params}
    return ModelConfig(
        **common,
        intermediate_size=int(d.get("intermediate_size") or 0),
        layer_types=layer_types,
        mlp_layer_types=tuple(d.get("mlp_layer_types") or [SPARSE] * n),
        rope=rope,
        sliding_window=d.get("sliding_window"),
        qk_norm=True,
        num_experts=_num_experts(d),
        num_experts_per_tok=int(d.get("num_experts_per_tok") or 0),
        moe_intermediate_size=int(d.get("moe_intermediate_size") or 0),
        norm_topk_prob=bool(d.get("norm_topk_prob", True)),
    )


def _llama(d: dict[str, Any]) -> ModelConfig:
    common = _common(d)
    n = common["num_hidden_layers"]
    if d.get("mlp_bias"):
        raise ConfigError("config field 'mlp_bias' is true; biased MLPs are not supported")
    return ModelConfig(
        **common,
        intermediate_size=int(_require(d, "intermediate_size")),
        layer_types=(FULL,) * n,
        mlp_layer_types=(DENSE,) * n,
        rope={FULL: _single_rope(d)},
    )


def _qwen3(d: dict[str, Any], moe: bool) -> ModelConfig:
    common = _common(d)
    n = common["num_hidden_layers"]
    if d.get("use_sliding_window"):
        raise ConfigError("config field 'use_sliding_window' is true; Qwen3 sliding attention is not supported")
    mlp_layer_types: list[str] = [DENSE] * n
    if moe:
        step = int(d.get("decoder_sparse_step", 1) or 1)
        dense_only = set(d.get("mlp_only_layers") or [])
        mlp_layer_types = [
            SPARSE if i not in dense_only and (i + 1) % step == 0 else DENSE for i in range(n)
        ]
    return ModelConfig(
        **common,
        intermediate_size=int(d.get("intermediate_size") or 0),
        layer_types=(FULL,) * n,
        mlp_layer_types=tuple(mlp_layer_types),
        rope={FULL: _single_rope(d)},
        qk_norm=True,
        num_experts=_num_experts(d),
        num_experts_per_tok=int(d.get("num_experts_per_tok") or 0),
        moe_intermediate_size=int(d.get("moe_intermediate_size") or 0),
        norm_topk_prob=bool(d.get("norm_topk_prob", False)),
    )


def from_hf_dict(d: dict[str, Any]) -> ModelConfig:
    """Build a validated config from a Hugging Face ``config.json`` dictionary."""
    if not isinstance(d, dict):
        raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
    model_type = d.get("model_type")
    if model_type is None:
        raise ConfigError("config is missing required field 'model_type'")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"config field 'model_type' is {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    _check_act(d)
    if model_type == "mellum":
        return _mellum(d)
    if model_type == "llama":
        return _llama(d)
    return _qwen3(d, moe=model_type == "qwen3_moe")
