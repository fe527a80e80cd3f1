"""Checkpoint tensors: read safetensors (single or sharded, memory-mapped), normalise the expert
layout, and assign to a model strictly, naming every missing, unexpected or mis-shaped tensor."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from engine.config import SPARSE, ModelConfig
from engine.errors import WeightsError

_PER_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
# Tensors a checkpoint may carry that inference does not use: a multi-token-prediction head (``mtp.``;
# no published Mellum2 config declares one, and no drafter reads it: it is skipped with a warning), and
# precomputed rotary frequencies.
_IGNORED = re.compile(r"^mtp\.|rotary_emb\.inv_freq$")
log = logging.getLogger("focal.engine")


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"cannot read safetensors file {path}: {exc}") from exc


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face checkpoint directory (``model.safetensors`` or sharded)."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise WeightsError(f"{index} is not a valid safetensors index: {exc}") from exc
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = directory / shard
            if not shard_path.exists():
                raise WeightsError(f"shard {shard} listed in {index.name} is missing from {directory}")
            tensors.update(_read_file(shard_path))
        absent = sorted(set(weight_map) - set(tensors))
        if absent:
            raise WeightsError(f"tensors listed in {index.name} but absent from the shards: {', '.join(absent[:10])}")
        return tensors
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"no *.safetensors file in {directory}")
    tensors = {}
    for path in files:
        tensors.update(_read_file(path))
    return tensors


def fuse_experts(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Stack per-expert ``experts.E.{gate,up,down}_proj`` into the fused 3-D layout.

    Idempotent: a checkpoint already in the fused layout passes through unchanged.
    """
    per_expert: dict[int, dict[str, dict[int, torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        match = _PER_EXPERT.match(name)
        if match is None:
            out[name] = tensor
            continue
        layer, expert, proj = int(match[1]), int(match[2]), match[3]
        per_expert.setdefault(layer, {}).setdefault(proj, {})[expert] = tensor
    for layer, projections in per_expert.items():
        prefix = f"model.layers.{layer}.mlp.experts"
        stacked = {}
        for proj in ("gate", "up", "down"):
            found = projections.get(proj, {})
            missing = [e for e in range(config.num_experts) if e not in found]
            if missing:
                raise WeightsError(
                    f"layer {layer} is missing expert tensors {prefix}.{{{','.join(map(str, missing[:8]))}}}"
                    f".{proj}_proj.weight"
                )
            extra = sorted(set(found) - set(range(config.num_experts)))
            if extra:
                raise WeightsError(f"layer {layer} has experts {extra} beyond num_experts={config.num_experts}")
            stacked[proj] = torch.stack([found[e] for e in range(config.num_experts)])
        out[f"{prefix}.gate_up_proj"] = torch.cat((stacked["gate"], stacked["up"]), dim=1)
        out[f"{prefix}.down_proj"] = stacked["down"]
    return out


def checkpoint_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of ``config`` must hold, in Hugging Face names (experts fused)."""
    h, d = config.hidden_size, config.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config.vocab_size, h),
                                          "model.norm.weight": (h,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    for layer in range(config.num_hidden_layers):
        p = f"model.layers.{layer}."
        projections = {"q_proj": config.num_attention_heads * d, "k_proj": config.num_key_value_heads * d,
                       "v_proj": config.num_key_value_heads * d}
        for name, rows in projections.items():
            shapes[f"{p}self_attn.{name}.weight"] = (rows, h)
            if config.attention_bias:
                shapes[f"{p}self_attn.{name}.bias"] = (rows,)
        shapes[f"{p}self_attn.o_proj.weight"] = (h, config.num_attention_heads * d)
        if config.attention_bias:
            shapes[f"{p}self_attn.o_proj.bias"] = (h,)
        if config.qk_norm:
            shapes[f"{p}self_attn.q_norm.weight"] = (d,)
            shapes[f"{p}self_attn.k_norm.weight"] = (d,)
        shapes[f"{p}input_layernorm.weight"] = (h,)
        shapes[f"{p}post_attention_layernorm.weight"] = (h,)
        if config.mlp_layer_types[layer] == SPARSE:
            e, i = config.num_experts, config.moe_intermediate_size
            shapes[f"{p}mlp.gate.weight"] = (e, h)
            shapes[f"{p}mlp.experts.gate_up_proj"] = (e, 2 * i, h)
            shapes[f"{p}mlp.experts.down_proj"] = (e, h, i)
        else:
            i = config.intermediate_size
            shapes[f"{p}mlp.gate_proj.weight"] = (i, h)
            shapes[f"{p}mlp.up_proj.weight"] = (i, h)
            shapes[f"{p}mlp.down_proj.weight"] = (h, i)
    return shapes


_FUSIONS = (
    ("self_attn.", ("q_proj", "k_proj", "v_proj"), "qkv_proj"),
    ("mlp.", ("gate_proj", "up_proj"), "gate_up_proj"),
)


def fuse_projections(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """HF checkpoint names -> the model's: q/k/v into ``qkv_proj``, dense gate/up into ``gate_up_proj``."""
    out = dict(tensors)
    for layer in range(config.num_hidden_layers):
        for module, parts, fused in _FUSIONS:
            prefix = f"model.layers.{layer}.{module}"
            for suffix in ("weight", "bias"):
                names = [f"{prefix}{part}.{suffix}" for part in parts]
                if all(name in out for name in names):
                    out[f"{prefix}{fused}.{suffix}"] = torch.cat([out.pop(name) for name in names])
    return out


def checkpoint_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under Hugging Face checkpoint names (fused projections split; views, no copy)."""
    config: ModelConfig = model.config
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("rotary.")}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    shapes = checkpoint_shapes(config)
    for layer in range(config.num_hidden_layers):
        for module, parts, fused in _FUSIONS:
            prefix = f"model.layers.{layer}.{module}"
            for suffix in ("weight", "bias"):
                name = f"{prefix}{fused}.{suffix}"
                if name not in state:
                    continue
                sizes = [shapes[f"{prefix}{part}.{suffix}"][0] for part in parts]
                for part, piece in zip(parts, state.pop(name).split(sizes)):
                    state[f"{prefix}{part}.{suffix}"] = piece
    return state


def assign(model: torch.nn.Module, tensors: dict[str, torch.Tensor], config: ModelConfig,
           dtype: torch.dtype) -> None:
    """Load ``tensors`` (HF names) into ``model`` in ``dtype``, strictly; ``WeightsError`` names any mismatch."""
    tensors = fuse_experts(tensors, config) if SPARSE in config.mlp_layer_types else dict(tensors)
    head = sorted(name for name in tensors if name.startswith("mtp."))
    if head:
        log.warning("the checkpoint's multi-token-prediction head is not used (speculative decoding drafts by "
                    "prompt lookup)", extra={"fields": {"tensors": len(head), "first": head[0]}})
    tensors = {name: t for name, t in tensors.items() if not _IGNORED.search(name)}
    expected = checkpoint_shapes(config)
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshaped = sorted(
        f"{name} {tuple(tensors[name].shape)} (expected {shape})"
        for name, shape in expected.items()
        if name in tensors and tuple(tensors[name].shape) != shape
    )
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
    if misshaped:
        problems.append(f"mis-shaped tensors: {'; '.join(misshaped[:10])}")
    if problems:
        raise WeightsError("checkpoint does not match the config: " + " | ".join(problems))
    state = {name: t.to(dtype) if t.is_floating_point() else t
             for name, t in fuse_projections(tensors, config).items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
