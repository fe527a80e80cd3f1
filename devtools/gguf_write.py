"""Write a checkpoint as GGUF with llama.cpp's tensor names and ``{arch}.*`` metadata keys.

Used to hand the same weights to llama.cpp in benchmarks and to test the GGUF reader. Matrices
are stored in the requested type (F32, F16, BF16, Q8_0, Q4_0, Q4_1); norms and the router stay
F32, as llama.cpp's converter keeps them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, TokenType
from gguf import quants as gguf_quants

from engine.config import FULL, SLIDING, SPARSE, ModelConfig
from engine.gguf_read import ARCH_TO_MODEL_TYPE
from engine.rope import gguf_attn_factor
from engine.tokenizer import ChatTokenizer

_MODEL_TYPE_TO_ARCH = {v: k for k, v in ARCH_TO_MODEL_TYPE.items()}
_HF_TO_GGUF = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "mlp.gate": "ffn_gate_inp",
}
_KEEP_F32 = ("_norm.weight", "ffn_gate_inp.weight")


def _permute_rope(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's q/k row permutation for the ``llama`` architecture (inverse of the reader's)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def gguf_tensors(config: ModelConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename HF tensors (experts fused) to llama.cpp names, splitting fused experts."""
    arch = _MODEL_TYPE_TO_ARCH[config.model_type]
    out: dict[str, torch.Tensor] = {"token_embd.weight": tensors["model.embed_tokens.weight"],
                                    "output_norm.weight": tensors["model.norm.weight"]}
    if not config.tie_word_embeddings:
        out["output.weight"] = tensors["lm_head.weight"]
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        for hf, name in _HF_TO_GGUF.items():
            for suffix in ("weight", "bias"):
                key = f"{prefix}{hf}.{suffix}"
                if key not in tensors:
                    continue
                value = tensors[key]
                if arch == "llama" and name == "attn_q":
                    value = _permute_rope(value, config.num_attention_heads)
                elif arch == "llama" and name == "attn_k":
                    value = _permute_rope(value, config.num_key_value_heads)
                out[f"blk.{layer}.{name}.{suffix}"] = value
        if config.mlp_layer_types[layer] == SPARSE:
            gate, up = tensors[f"{prefix}mlp.experts.gate_up_proj"].chunk(2, dim=1)
            out[f"blk.{layer}.ffn_gate_exps.weight"] = gate
            out[f"blk.{layer}.ffn_up_exps.weight"] = up
            out[f"blk.{layer}.ffn_down_exps.weight"] = tensors[f"{prefix}mlp.experts.down_proj"]
    return out


def _add_metadata(writer: GGUFWriter, config: ModelConfig, arch: str) -> None:
    writer.add_uint32(f"{arch}.block_count", config.num_hidden_layers)
    writer.add_uint32(f"{arch}.context_length", config.max_position_embeddings)
    writer.add_uint32(f"{arch}.embedding_length", config.hidden_size)
    writer.add_uint32(f"{arch}.feed_forward_length", config.intermediate_size)
    writer.add_uint32(f"{arch}.attention.head_count", config.num_attention_heads)
    writer.add_uint32(f"{arch}.attention.head_count_kv", config.num_key_value_heads)
    writer.add_uint32(f"{arch}.attention.key_length", config.head_dim)
    writer.add_uint32(f"{arch}.attention.value_length", config.head_dim)
    writer.add_uint32(f"{arch}.rope.dimension_count", config.head_dim)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", config.rms_norm_eps)
    writer.add_uint32(f"{arch}.vocab_size", config.vocab_size)
    full = config.rope[FULL] if FULL in config.rope else config.rope[SLIDING]
    writer.add_float32(f"{arch}.rope.freq_base", full.theta)
    if full.rope_type == "yarn":
        writer.add_string(f"{arch}.rope.scaling.type", "yarn")
        writer.add_float32(f"{arch}.rope.scaling.factor", full.factor)
        writer.add_uint32(f"{arch}.rope.scaling.original_context_length", full.original_max_position_embeddings)
        writer.add_float32(f"{arch}.rope.scaling.yarn_beta_fast", full.beta_fast)
        writer.add_float32(f"{arch}.rope.scaling.yarn_beta_slow", full.beta_slow)
        if full.attention_factor is not None:
            writer.add_float32(f"{arch}.rope.scaling.attn_factor", gguf_attn_factor(full.attention_factor, full.factor))
    writer.add_array(f"{arch}.attention.sliding_window_pattern", [t == SLIDING for t in config.layer_types])
    if SLIDING in config.layer_types:
        writer.add_uint32(f"{arch}.attention.sliding_window", config.sliding_window)
        writer.add_float32(f"{arch}.rope.freq_base_swa", config.rope[SLIDING].theta)
    if SPARSE in config.mlp_layer_types:
        writer.add_uint32(f"{arch}.expert_count", config.num_experts)
        writer.add_uint32(f"{arch}.expert_used_count", config.num_experts_per_tok)
        writer.add_uint32(f"{arch}.expert_feed_forward_length", config.moe_intermediate_size)
        writer.add_bool(f"{arch}.expert_weights_norm", config.norm_topk_prob)
        writer.add_uint32(f"{arch}.expert_gating_func", 1)  # softmax
    if config.bos_token_id is not None:
        writer.add_uint32("tokenizer.ggml.bos_token_id", config.bos_token_id)
    if config.eos_token_ids:
        writer.add_uint32("tokenizer.ggml.eos_token_id", config.eos_token_ids[0])


def _add_tokenizer(writer: GGUFWriter, tokenizer: ChatTokenizer, vocab_size: int) -> None:
    model = json.loads(tokenizer.tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise ValueError("only byte-level BPE tokenizers can be written to GGUF")
    by_id = {index: token for token, index in model["vocab"].items()}
    special = {t.content: index for index, t in tokenizer.tokenizer.get_added_tokens_decoder().items()}
    for content, index in special.items():
        by_id[index] = content
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index, f"[PAD{index}]")
        tokens.append(token)
        if index not in by_id:
            types.append(TokenType.UNUSED)
        elif token in special:
            types.append(TokenType.CONTROL)
        else:
            types.append(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_add_bos_token(tokenizer.add_bos)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _encode(value: torch.Tensor, qtype: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType]:
    array = value.detach().to(torch.float32).cpu().numpy()
    if qtype == GGMLQuantizationType.F32:
        return array, qtype
    if qtype == GGMLQuantizationType.F16:
        return array.astype(np.float16), qtype
    return gguf_quants.quantize(array, qtype), qtype


def write_gguf(path: Path, config: ModelConfig, tensors: dict[str, torch.Tensor],
               qtype: GGMLQuantizationType = GGMLQuantizationType.F32,
               tokenizer: ChatTokenizer | None = None, name: str = "focal-export",
               overrides: dict[str, str | int] | None = None) -> None:
    """Write ``tensors`` (HF names, experts fused) as a GGUF file llama.cpp can load. ``overrides``
    replaces metadata values after they are written (a string, or an integer as uint32): how the
    tests make a file that says something the reader must refuse."""
    arch = _MODEL_TYPE_TO_ARCH[config.model_type]
    writer = GGUFWriter(str(path), arch)
    writer.add_name(name)
    _add_metadata(writer, config, arch)
    if tokenizer is not None:
        _add_tokenizer(writer, tokenizer, config.vocab_size)
    for key, value in (overrides or {}).items():
        kind = GGUFValueType.STRING if isinstance(value, str) else GGUFValueType.UINT32
        writer.add_key_value(key, value, kind)
    for name_, value in gguf_tensors(config, tensors).items():
        kind = GGMLQuantizationType.F32 if value.dim() == 1 or name_.endswith(_KEEP_F32) else qtype
        array, raw_type = _encode(value, kind)
        writer.add_tensor(name_, array, raw_dtype=raw_type if raw_type != GGMLQuantizationType.F32 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
