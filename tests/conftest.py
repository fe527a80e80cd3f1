"""Shared fixtures: tiny random Mellum2 checkpoints on disk, the default model, a seeded torch."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

torch.set_num_threads(2)

SLIDING, FULL = "sliding_attention", "full_attention"

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
        FULL: {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 16.0,
               "original_max_position_embeddings": 64, "beta_fast": 32.0, "beta_slow": 1.0,
               "attention_factor": 1.2772588722239782},
        SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
    },
    "bos_token_id": 0,
    "eos_token_id": 28,
}


def hf_mellum(config: dict, seed: int = 0):
    """A transformers MellumForCausalLM with weights large enough that every part matters."""
    from transformers import MellumConfig, MellumForCausalLM

    torch.manual_seed(seed)
    model = MellumForCausalLM(MellumConfig(**config)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.5 / param.shape[-1] ** 0.5 if param.dim() > 1 else 0.1)
    return model


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


def our_logits(model, ids: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    cache = model.new_cache(ids.shape[0])
    step = chunk or ids.shape[1]
    with torch.no_grad():
        parts = [model.logits(model(ids[:, s : s + step], cache)) for s in range(0, ids.shape[1], step)]
    return torch.cat(parts, dim=1)


def assert_logits_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    scale = ref.abs().max().item()
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-4 * scale, f"max abs diff {diff:.3g} exceeds 1e-4 x {scale:.3g}"


@pytest.fixture(scope="session")
def tiny_hf():
    return hf_mellum(TINY_MELLUM)


@pytest.fixture(scope="session")
def tiny_fused_dir(tmp_path_factory, tiny_hf) -> Path:
    state = {k: v.detach().clone() for k, v in tiny_hf.state_dict().items()}
    return write_checkpoint(tmp_path_factory.mktemp("fused"), TINY_MELLUM, state)


@pytest.fixture(scope="session")
def tiny_per_expert_dir(tmp_path_factory, tiny_hf) -> Path:
    state = per_expert_layout(tiny_hf.state_dict())
    return write_checkpoint(tmp_path_factory.mktemp("per_expert"), TINY_MELLUM, state, shards=3)


@pytest.fixture(scope="session")
def default_engine():
    from engine import Engine

    return Engine.load()


@pytest.fixture(scope="session")
def engine():
    """The default model as the service runs it: the preferred dtype of this CPU (bf16 here)."""
    from engine import Engine
    from engine.device import preferred_dtype

    return Engine.load(dtype=preferred_dtype())


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
