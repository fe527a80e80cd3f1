"""Random Mellum2 models for parity tests and benchmarks: configurations, weights, checkpoints on disk.

``TINY_MELLUM`` mixes every layer kind at toy width; ``mellum_slice`` has the real checkpoint's
widths (hidden 2304, 32/4 heads, head_dim 128, 64 experts top-8 of width 896, vocab 98304) with
few layers. Weights are random but large enough that every part of the model matters.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

SLIDING, FULL = "sliding_attention", "full_attention"

YARN = {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 16.0, "original_max_position_embeddings": 8192,
        "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 1.2772588722239782}

TINY_MELLUM = {
    "model_type": "mellum",
    "architectures": ["MellumForCausalLM"],
    "vocab_size": 160,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-6,
    "sliding_window": 8,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "norm_topk_prob": True,
    "tie_word_embeddings": False,
    "layer_types": [SLIDING, SLIDING, SLIDING, FULL],
    "mlp_layer_types": ["dense", "sparse", "sparse", "sparse"],
    "rope_parameters": {
        FULL: {**YARN, "original_max_position_embeddings": 64},
        SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
    },
    "bos_token_id": 0,
    "eos_token_id": 28,
}


def mellum_slice(layer_types: list[str] | None = None, mlp_layer_types: list[str] | None = None,
                 sliding_window: int = 1024) -> dict:
    """A real-width Mellum2 configuration with few layers (default: 3 sliding + 1 full, all sparse)."""
    layer_types = layer_types or [SLIDING, SLIDING, SLIDING, FULL]
    return {
        "model_type": "mellum", "vocab_size": 98304, "hidden_size": 2304, "intermediate_size": 7168,
        "num_hidden_layers": len(layer_types), "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "sliding_window": sliding_window,
        "num_experts": 64, "num_experts_per_tok": 8, "moe_intermediate_size": 896, "norm_topk_prob": True,
        "tie_word_embeddings": False, "layer_types": layer_types,
        "mlp_layer_types": mlp_layer_types or ["sparse"] * len(layer_types), "bos_token_id": 0, "eos_token_id": 28,
        "rope_parameters": {FULL: dict(YARN), SLIDING: {"rope_type": "default", "rope_theta": 500000.0}},
    }


def _std(shape: torch.Size) -> float:
    """Matrices of unit-ish output (norms are drawn near 1 instead)."""
    return 0.5 / shape[-1] ** 0.5 if len(shape) > 1 else 0.1


def random_state(config: dict, seed: int = 0, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights in transformers' layout for ``config``, made without building the model (the
    real-width slice would need its 8.5 GB twice): norms near 1, matrices of unit-ish output. Drawn
    on ``device`` (a whole 28-layer model is drawn on the GPU that runs it) and stored in ``dtype``."""
    from transformers import MellumConfig, MellumForCausalLM

    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.device("meta"):
        skeleton = MellumForCausalLM(MellumConfig(**config))
    state = {}
    for name, param in skeleton.named_parameters():
        noise = torch.randn(param.shape, generator=generator, device=device)
        state[name] = (1.0 + 0.1 * noise if "norm" in name else noise * _std(param.shape)).to(dtype)
    return state


def hf_mellum(config: dict, seed: int = 0, dtype: torch.dtype = torch.float32,
              state: dict[str, torch.Tensor] | None = None):
    """transformers' MellumForCausalLM holding ``state``, or random weights of the same kind drawn in
    place after ``torch.manual_seed(seed)`` (the draw the parity and bf16 tests were written against)."""
    from transformers import MellumConfig, MellumForCausalLM

    if state is None:
        torch.manual_seed(seed)
        model = MellumForCausalLM(MellumConfig(**config)).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.copy_(1.0 + 0.1 * torch.randn_like(param))
                else:
                    param.normal_(0.0, _std(param.shape))
        return model.to(dtype)
    with torch.device("meta"):
        model = MellumForCausalLM(MellumConfig(**config))
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True, strict=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(model.config)  # real tables, not meta
    return model.eval()


def per_expert_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The public checkpoint's layout: experts.E.{gate,up,down}_proj.weight, one tensor each."""
    out = {}
    for name, tensor in state.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            gate, up = tensor.chunk(2, dim=1)
            base = name.removesuffix("gate_up_proj")
            for e in range(tensor.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = gate[e].clone()
                out[f"{base}{e}.up_proj.weight"] = up[e].clone()
        elif name.endswith("mlp.experts.down_proj"):
            base = name.removesuffix("down_proj")
            for e in range(tensor.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = tensor[e].clone()
        else:
            out[name] = tensor.clone()
    return out


def write_checkpoint(directory: Path, config: dict, state: dict[str, torch.Tensor], shards: int = 1) -> Path:
    """Write config.json and safetensors (sharded with an index when ``shards`` > 1)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    names = sorted(state)
    if shards == 1:
        save_file({n: state[n].contiguous() for n in names}, str(directory / "model.safetensors"))
        return directory
    weight_map = {}
    for shard in range(shards):
        part = names[shard::shards]
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n].contiguous() for n in part}, str(directory / file))
        weight_map.update({n: file for n in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory
