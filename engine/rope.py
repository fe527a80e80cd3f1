"""Rotary position embeddings: plain RoPE and YaRN, one table per layer type.

YaRN (https://arxiv.org/abs/2309.00071) blends interpolated and extrapolated frequencies with a
linear ramp between the correction dimensions given by ``beta_fast``/``beta_slow`` and scales
cos/sin by an attention factor. The rotation is the "rotate half" convention of Hugging Face
checkpoints; GGUF files of the llama architecture are un-permuted at load to match it.
"""

from __future__ import annotations

import math

import torch

from engine.config import RopeConfig


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def attention_factor_from_gguf(attn_factor: float, factor: float) -> float:
    """GGUF's ``rope.scaling.attn_factor`` as transformers' ``attention_factor``. llama.cpp multiplies
    the key by YaRN's own scale (0.1 ln(factor) + 1), where transformers' value replaces that scale:
    a file says 1.0 for transformers' default. Checked against llama.cpp on the same file
    (``bench.engine.agreement``): read as transformers' value, YaRN layers disagree from position 1."""
    return attn_factor * _yarn_mscale(factor)


def gguf_attn_factor(attention_factor: float, factor: float) -> float:
    """transformers' ``attention_factor`` as GGUF's ``rope.scaling.attn_factor`` (see above)."""
    return attention_factor / _yarn_mscale(factor)


def _correction_dim(rotations: float, dim: int, base: float, original_len: int) -> float:
    return dim * math.log(original_len / (rotations * 2 * math.pi)) / (2 * math.log(base))


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> tuple[torch.Tensor, float]:
    """Return the inverse frequencies (``head_dim // 2``, fp32) and the cos/sin scale."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    pos_freqs = rope.theta**exponents
    if rope.rope_type == "default":
        return 1.0 / pos_freqs, 1.0
    factor = rope.factor
    attention = rope.attention_factor
    if attention is None:
        if rope.mscale and rope.mscale_all_dim:
            attention = _yarn_mscale(factor, rope.mscale) / _yarn_mscale(factor, rope.mscale_all_dim)
        else:
            attention = _yarn_mscale(factor)
    original = rope.original_max_position_embeddings
    assert original is not None
    low = _correction_dim(rope.beta_fast, head_dim, rope.theta, original)
    high = _correction_dim(rope.beta_slow, head_dim, rope.theta, original)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation_weight = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * ramp + (1.0 / pos_freqs) * extrapolation_weight
    return inv_freq, float(attention)


class RotaryEmbedding(torch.nn.Module):
    """cos/sin for given absolute positions, computed in fp32 like the reference."""

    def __init__(self, rope: RopeConfig, head_dim: int) -> None:
        super().__init__()
        inv_freq, scale = inverse_frequencies(rope, head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.scale = scale

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]  # [T, D/2]
        angles = torch.cat((freqs, freqs), dim=-1)
        return (angles.cos() * self.scale).to(dtype), (angles.sin() * self.scale).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, T, D] by position; cos/sin are [T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
