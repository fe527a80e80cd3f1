"""The machine's own limits, measured in the same run: matmul FLOP/s and copy bandwidth, and what a
prefill token or a decode step needs of them (roofline fractions)."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.report import best_of, progress
from engine.config import ModelConfig
from engine.model import CausalLM
from engine.packed import PackedExperts, PackedLinear, pack, packed_linear, packing_available
from engine.quant import Int8Experts
from engine.tiles import TiledExperts


def machine_limits(threads: int) -> dict[str, float]:
    """Achieved matmul FLOP/s of this machine (fp32 and bf16) and its copy bandwidth (read + write).
    The matmul is timed through PyTorch's own path and through oneDNN with a reordered weight (what
    the engine runs, ``engine.packed``), and the faster counts: the limit is the machine's, not one
    library's."""
    limits = {}
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
        seconds = best_of(5, lambda a=a, b=b: torch.mm(a, b))
        if packing_available("cpu", dtype):
            packed = pack(b)
            seconds = min(seconds, best_of(5, lambda a=a, packed=packed: packed_linear(a, packed)))
        limits[f"matmul_gflops_{label}"] = 2 * 4096**3 / seconds / 1e9
    source = torch.empty(256 * 2**20, dtype=torch.float32)
    source.normal_()
    target = torch.empty_like(source)
    seconds = best_of(5, lambda: target.copy_(source))
    limits["copy_gb_s"] = 2 * source.numel() * 4 / seconds / 1e9
    progress(f"machine: matmul {limits['matmul_gflops_fp32']:.0f} GFLOP/s fp32, {limits['matmul_gflops_bf16']:.0f} "
             f"bf16; copy {limits['copy_gb_s']:.1f} GB/s ({threads} threads)")
    return limits


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (oneDNN's bf16 matmuls use them; our llama.cpp build does not)."""
    try:
        return " amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def active_flops_per_token(config: ModelConfig, context: int) -> float:
    """Multiply-adds x 2 per prefill token: projections, active experts, router and attention scores
    at the mean attended length of a ``context``-token prompt (the lm_head runs for one row only)."""
    h, d = config.hidden_size, config.head_dim
    projections = h * (config.num_attention_heads + 2 * config.num_key_value_heads) * d \
        + config.num_attention_heads * d * h
    flops = 0.0
    for kind, mlp in zip(config.layer_types, config.mlp_layer_types):
        if mlp == "sparse":
            mlp_params = config.num_experts_per_tok * 3 * h * config.moe_intermediate_size + config.num_experts * h
        else:
            mlp_params = 3 * h * config.intermediate_size
        window = config.sliding_window if kind == "sliding_attention" and config.sliding_window else context
        attended = sum(min(position + 1, window) for position in range(context)) / context
        flops += 2 * (projections + mlp_params) + 4 * attended * config.num_attention_heads * d
    return flops


def decode_weight_bytes(model: CausalLM) -> float:
    """Weight bytes one decode step reads: everything but the embedding table and the idle experts."""
    total = 0.0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name.startswith("model.embed_tokens") or "rotary" in name:
            continue
        total += tensor.numel() * tensor.element_size()
    for module in model.modules():  # reordered weights are plain attributes, not parameters
        if isinstance(module, PackedLinear | PackedExperts | TiledExperts):
            total += module.weight_bytes()
    for module in model.modules():  # only top-k of the experts are read per token
        if isinstance(module, Int8Experts):
            stored = sum(t.numel() * t.element_size() for t in module.buffers())
        elif isinstance(module, PackedExperts | TiledExperts):
            stored = module.weight_bytes()
        elif module.__class__.__name__ == "Experts":
            stored = sum(t.numel() * t.element_size() for t in module.parameters())
        else:
            continue
        total -= stored * (1 - model.config.num_experts_per_tok / model.config.num_experts)
    if model.config.tie_word_embeddings and isinstance(model.lm_head, torch.nn.Linear):
        total += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    return total
