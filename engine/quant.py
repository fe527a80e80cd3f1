"""Weight-only int8: every projection (attention, MLPs, experts, lm_head) stored as int8 with one
scale per output row, activations untouched.

Decode reads the weights once per token, so it is bound by their bytes: int8 reads a quarter of
fp32 and half of bf16. On the CPU one activation row (decode) goes through the engine's own C
kernels (``engine.native``: a matmul, and a whole sparse-MoE layer in one call) where they are
built, a few rows through torch's ``_weight_int8pack_mm`` (int8 weights, fp32/bf16 activations, no
dequantised copy); elsewhere the rows are dequantised on the fly.
Embeddings, norms and the router stay in full precision (the router decides which experts run).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine import native
from engine.model import CausalLM, Experts
from engine.tiles import tile_routers

# Rows up to which the int8 kernel beats widening the weights for a regular matmul (bf16, 2 threads,
# a Mellum2-sized 1792x2304 weight: the kernel wins clearly at one row, breaks even near 16 rows and
# loses by a wide margin at hundreds; bench.engine's int8 rows time the whole model).
INT8_KERNEL_ROWS = 12


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``weight ~= q * scale[..., None]`` with q in [-127, 127]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=-1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return q, scale


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x @ (q * scale).T`` for x [..., K], q [N, K] int8, scale [N]. Few rows (decode) use the
    int8 kernel, which reads the int8 bytes; many rows (prefill) are compute-bound, and widening
    the weights once for a bf16/fp32 matmul is faster there (int8 values are exact in bf16)."""
    flat = x.reshape(-1, x.shape[-1])
    if scale.dtype != flat.dtype:
        scale = scale.to(flat.dtype)
    kernel = flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.bfloat16)
    if kernel and flat.shape[0] == 1 and native.usable(flat):
        out = native.int8_gemv(flat, q, scale)
    elif kernel and flat.shape[0] <= INT8_KERNEL_ROWS:
        out = torch._weight_int8pack_mm(flat.contiguous(), q, scale)
    else:
        out = F.linear(flat, q.to(flat.dtype)) * scale
    return out.reshape(*x.shape[:-1], q.shape[0])


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        q, scale = quantize_rows(linear.weight)
        self.register_buffer("weight_q", q)
        self.register_buffer("scale", scale.to(linear.weight.dtype))  # the activations' dtype: no cast per call
        self.bias = linear.bias

    @property
    def out_features(self) -> int:
        return self.weight_q.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = int8_matmul(x, self.weight_q, self.scale)
        return out if self.bias is None else out + self.bias


class Int8Experts(Experts):
    """The experts' weights as int8 rows; routing and the sorted-slice loop are the parent's."""

    def __init__(self, experts: Experts) -> None:
        nn.Module.__init__(self)
        self.decode_rows = experts.decode_rows
        dtype = experts.gate_up_proj.dtype
        gate_up, gate_up_scale = quantize_rows(experts.gate_up_proj)
        down, down_scale = quantize_rows(experts.down_proj)
        self.register_buffer("gate_up_q", gate_up)
        self.register_buffer("gate_up_scale", gate_up_scale.to(dtype))
        self.register_buffer("down_q", down)
        self.register_buffer("down_scale", down_scale.to(dtype))

    @property
    def num_experts(self) -> int:
        return self.gate_up_q.shape[0]

    def expert(self, x: torch.Tensor, index: int) -> torch.Tensor:
        gate, up = int8_matmul(x, self.gate_up_q[index], self.gate_up_scale[index]).chunk(2, dim=-1)
        return int8_matmul(F.silu(gate) * up, self.down_q[index], self.down_scale[index])

    def row_by_row(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Decode: each row's whole layer in one native call where the kernels are built (fp32 sums
        and activations), else the parent's expert-by-expert loop."""
        if not native.usable(x):
            return super().row_by_row(x, weights, experts)
        return torch.cat([native.int8_moe(x[row : row + 1], weights[row], experts[row], self.gate_up_q,
                                          self.gate_up_scale, self.down_q, self.down_scale)
                          for row in range(x.shape[0])])


def quantize_int8(model: CausalLM) -> CausalLM:
    """Replace every projection of ``model`` by its int8 form, in place; returns the model. A bf16
    router on a CPU with AVX-512 BF16 runs through the tile kernel (``engine.tiles``)."""
    return tile_routers(model.replace_projections(Int8Linear, Int8Experts))
