"""Read GGUF files (llama.cpp's format): metadata to ``ModelConfig``, tensors to HF names, dequantised.

Supported architectures: ``llama``, ``qwen3``, ``qwen3moe`` and ``mellum``. The PyPI ``gguf``
package predates the mellum constants, so its keys are spelled out here as llama.cpp's
converter writes them (``mellum.*``). Which layers are sparse follows from the tensors present
(``blk.N.ffn_gate_inp``), as in llama.cpp.

llama.cpp permutes the q/k rows of the ``llama`` architecture for its interleaved RoPE; they
are permuted back here to the "rotate half" layout the model uses.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf import quants as gguf_quants

from engine.config import DENSE, FULL, SLIDING, SPARSE, ModelConfig, RopeConfig
from engine.errors import ConfigError, WeightsError
from engine.rope import attention_factor_from_gguf

ARCH_TO_MODEL_TYPE = {"llama": "llama", "qwen3": "qwen3", "qwen3moe": "qwen3_moe", "mellum": "mellum"}

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def hf_name(gguf_name: str) -> str:
    """Hugging Face parameter name of a llama.cpp tensor name."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK.match(gguf_name)
    if match is None or match[2] not in _LAYER_NAMES:
        raise WeightsError(f"unexpected GGUF tensor {gguf_name!r}")
    return f"model.layers.{match[1]}.{_LAYER_NAMES[match[2]]}.{match[3]}"


# ---- dequantisation -------------------------------------------------------------------------

def _f16(raw: torch.Tensor) -> torch.Tensor:
    return raw.contiguous().view(torch.float16).to(torch.float32)


def _dequant_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    scale = _f16(blocks[:, :2])
    values = blocks[:, 2:].contiguous().view(torch.int8).to(torch.float32)
    return values * scale


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    return torch.cat((packed & 0x0F, packed >> 4), dim=1).to(torch.float32)


def _dequant_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    return (_nibbles(blocks[:, 2:]) - 8.0) * _f16(blocks[:, :2])


def _dequant_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    return _nibbles(blocks[:, 4:]) * _f16(blocks[:, :2]) + _f16(blocks[:, 2:4])


_BLOCK_DEQUANT = {
    GGMLQuantizationType.Q8_0: (34, _dequant_q8_0),
    GGMLQuantizationType.Q4_0: (18, _dequant_q4_0),
    GGMLQuantizationType.Q4_1: (20, _dequant_q4_1),
}


def dequantize(raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> torch.Tensor:
    """Decode one tensor's raw GGUF data to fp32 of ``shape`` (row-major, HF order)."""
    with warnings.catch_warnings():
        # The memory map is read-only; every branch below copies before anything could write.
        warnings.simplefilter("ignore", UserWarning)
        data = torch.from_numpy(np.ascontiguousarray(raw).view(np.uint8).reshape(-1))
    if qtype == GGMLQuantizationType.F32:
        out = data.view(torch.float32).clone()
    elif qtype == GGMLQuantizationType.F16:
        out = data.view(torch.float16).to(torch.float32)
    elif qtype == GGMLQuantizationType.BF16:
        out = data.view(torch.bfloat16).to(torch.float32)
    elif qtype in _BLOCK_DEQUANT:
        block_bytes, decode = _BLOCK_DEQUANT[qtype]
        out = decode(data.view(-1, block_bytes))
    else:
        decoded = gguf_quants.dequantize(np.ascontiguousarray(raw), qtype)
        out = torch.from_numpy(np.ascontiguousarray(decoded, dtype=np.float32))
    count = int(np.prod(shape))
    if out.numel() != count:
        raise WeightsError(f"GGUF tensor data holds {out.numel()} values, its shape {shape} needs {count}")
    return out.reshape(shape)


def _unpermute_rope(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (interleaved pairs back to two halves per head)."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


# ---- metadata -------------------------------------------------------------------------------

class GGUFFile:
    """An open GGUF file: typed metadata access and tensors by name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.reader = GGUFReader(str(path))
        except (ValueError, OSError, IndexError) as exc:
            raise WeightsError(f"cannot read GGUF file {path}: {exc}") from exc
        self.arch = str(self.get("general.architecture", required=True))
        self.tensors = {t.name: t for t in self.reader.tensors}

    def get(self, key: str, default: Any = None, required: bool = False) -> Any:
        field = self.reader.fields.get(key)
        if field is None:
            if required:
                raise ConfigError(f"GGUF file {self.path.name} is missing metadata key '{key}'")
            return default
        return field.contents()

    def arch_key(self, suffix: str, default: Any = None, required: bool = False) -> Any:
        return self.get(f"{self.arch}.{suffix}", default, required)


def _layer_types(gguf: GGUFFile, model_type: str, layers: int) -> tuple[str, ...]:
    """Sliding or full attention per layer, from ``{arch}.attention.sliding_window_pattern`` (one
    boolean per layer). Only a list is understood: anything else is an error naming the key, never
    a silent all-full model; Mellum2 has sliding layers, so the key is required for it."""
    key = f"{gguf.arch}.attention.sliding_window_pattern"
    pattern = gguf.arch_key("attention.sliding_window_pattern")
    if pattern is None:
        if model_type == "mellum":
            raise ConfigError(f"GGUF file {gguf.path.name}: {key} is missing (Mellum2 has sliding-window layers)")
        return (FULL,) * layers
    if not isinstance(pattern, list) or len(pattern) != layers:
        raise ConfigError(f"GGUF file {gguf.path.name}: {key} must be a list of {layers} booleans (one per layer), "
                          f"got {pattern!r}")
    return tuple(SLIDING if slides else FULL for slides in pattern)


def config_from_gguf(gguf: GGUFFile) -> ModelConfig:
    """Build a ``ModelConfig`` from a GGUF file's ``{arch}.*`` metadata and tensor list."""
    if gguf.arch not in ARCH_TO_MODEL_TYPE:
        raise ConfigError(
            f"GGUF architecture {gguf.arch!r} is not supported; supported: {', '.join(ARCH_TO_MODEL_TYPE)}"
        )
    model_type = ARCH_TO_MODEL_TYPE[gguf.arch]
    n = int(gguf.arch_key("block_count", required=True))
    hidden = int(gguf.arch_key("embedding_length", required=True))
    heads = int(gguf.arch_key("attention.head_count", required=True))
    head_dim = int(gguf.arch_key("attention.key_length") or gguf.arch_key("rope.dimension_count") or hidden // heads)
    embed = gguf.tensors.get("token_embd.weight")
    if embed is None:
        raise WeightsError(f"GGUF file {gguf.path.name} has no token_embd.weight")
    vocab = int(gguf.arch_key("vocab_size") or embed.shape[-1])
    theta = float(gguf.arch_key("rope.freq_base", 10000.0))
    full_rope = RopeConfig("default", theta)
    if gguf.arch_key("rope.scaling.type") == "yarn":
        factor = float(gguf.arch_key("rope.scaling.factor", 1.0))
        attn_factor = gguf.arch_key("rope.scaling.attn_factor")
        full_rope = RopeConfig(
            "yarn",
            theta,
            factor=factor,
            original_max_position_embeddings=int(gguf.arch_key("rope.scaling.original_context_length", required=True)),
            beta_fast=float(gguf.arch_key("rope.scaling.yarn_beta_fast", 32.0)),
            beta_slow=float(gguf.arch_key("rope.scaling.yarn_beta_slow", 1.0)),
            attention_factor=None if attn_factor is None else attention_factor_from_gguf(float(attn_factor), factor),
        )
    layer_types = _layer_types(gguf, model_type, n)
    rope = {FULL: full_rope}
    if SLIDING in layer_types:
        rope[SLIDING] = RopeConfig("default", float(gguf.arch_key("rope.freq_base_swa", theta)))
    sparse = tuple(SPARSE if f"blk.{i}.ffn_gate_inp.weight" in gguf.tensors else DENSE for i in range(n))
    eos = gguf.get("tokenizer.ggml.eos_token_id")
    return ModelConfig(
        model_type=model_type,
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=n,
        num_attention_heads=heads,
        num_key_value_heads=int(gguf.arch_key("attention.head_count_kv", heads)),
        head_dim=head_dim,
        intermediate_size=int(gguf.arch_key("feed_forward_length", 0) or 0),
        rms_norm_eps=float(gguf.arch_key("attention.layer_norm_rms_epsilon", 1e-6)),
        max_position_embeddings=int(gguf.arch_key("context_length", 4096)),
        layer_types=layer_types,
        mlp_layer_types=sparse,
        rope=rope,
        sliding_window=gguf.arch_key("attention.sliding_window"),
        qk_norm="blk.0.attn_q_norm.weight" in gguf.tensors,
        attention_bias="blk.0.attn_q.bias" in gguf.tensors,
        num_experts=int(gguf.arch_key("expert_count", 0) or 0),
        num_experts_per_tok=int(gguf.arch_key("expert_used_count", 0) or 0),
        moe_intermediate_size=int(gguf.arch_key("expert_feed_forward_length", 0) or 0),
        norm_topk_prob=bool(gguf.arch_key("expert_weights_norm", model_type != "qwen3_moe")),
        tie_word_embeddings="output.weight" not in gguf.tensors,
        bos_token_id=gguf.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
    )


def read_tensors(gguf: GGUFFile, config: ModelConfig) -> dict[str, torch.Tensor]:
    """All tensors of the file, dequantised to fp32 under Hugging Face names (experts fused)."""
    out: dict[str, torch.Tensor] = {}
    split_experts: dict[str, torch.Tensor] = {}
    for name, tensor in gguf.tensors.items():
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        try:
            value = dequantize(tensor.data, tensor.tensor_type, shape)
        except WeightsError as exc:
            raise WeightsError(f"{gguf.path.name}: tensor {name}: {exc}") from exc
        target = hf_name(name)
        if gguf.arch == "llama" and name.endswith(("attn_q.weight", "attn_q.bias")):
            value = _unpermute_rope(value, config.num_attention_heads)
        elif gguf.arch == "llama" and name.endswith(("attn_k.weight", "attn_k.bias")):
            value = _unpermute_rope(value, config.num_key_value_heads)
        if ".mlp.experts.gate_proj" in target or ".mlp.experts.up_proj" in target:
            split_experts[target] = value
        else:
            out[target] = value
    for name in [n for n in split_experts if ".gate_proj" in n]:
        up_name = name.replace(".gate_proj", ".up_proj")
        if up_name not in split_experts:
            raise WeightsError(f"GGUF file {gguf.path.name} has {name} but no matching up projection")
        fused = name.replace(".gate_proj.weight", ".gate_up_proj")
        out[fused] = torch.cat((split_experts.pop(name), split_experts.pop(up_name)), dim=1)
    if split_experts:
        raise WeightsError(f"GGUF file {gguf.path.name} has unpaired expert tensors: {', '.join(split_experts)}")
    for name in [n for n in out if n.endswith("mlp.experts.down_proj.weight")]:
        out[name.removesuffix(".weight")] = out.pop(name)
    return out
