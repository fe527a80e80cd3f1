"""Matmuls on the CPU (bf16 and fp32) with every weight reordered for oneDNN once, at load.

bf16: ``F.linear`` on bf16 CPU tensors hands the weight to oneDNN, which reorders it into its
blocked layout on every call. For the row counts the engine sees (one row per decode step, tens
to hundreds per expert in prefill) that reorder is a large share of the call: reordering once is
faster per matmul at every row count, most at tens of rows and least at thousands.

fp32: ``F.linear`` on fp32 CPU tensors goes to the BLAS PyTorch was built with (MKL in the
official wheels), whose kernels on some CPUs (the AMD EPYC this project is measured on among
them) reach a fraction of the vector units that oneDNN's reach; the same reordered oneDNN
weight is then faster at every row count, one-row decode steps included. Both are full-precision
fp32 arithmetic (oneDNN is not allowed to round to bf16 or tf32 here); only the order of the
sums differs. bench.engine's fp32 and bf16 rows time the whole model.

The reordered weight replaces the plain one, so memory stays the same (a tied lm_head gets its
own copy). On CPUs with AVX-512 BF16, bf16 weights go to the engine's own kernel instead
(``engine.tiles``): its one layout serves prefill and streams decode steps at the memory's rate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.model import CausalLM, Experts
from engine.tiles import tile_weights, tiles_available

# The row count oneDNN is told to expect; any count works, this one suits expert slices.
_ROWS_HINT = 64


def packing_available(device: torch.device | str, dtype: torch.dtype) -> bool:
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), _ROWS_HINT)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(flat, packed, bias, "none", [], "")
    return out.reshape(*x.shape[:-1], out.shape[-1])


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.packed = pack(linear.weight)  # an opaque oneDNN tensor: a plain attribute, not a buffer
        self.bias = linear.bias
        self.out_features = linear.out_features

    def weight_bytes(self) -> int:
        return self.packed.numel() * self.packed.element_size()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(x, self.packed, self.bias)


class PackedExperts(Experts):
    """Each expert's two weights reordered once; routing and the sorted-slice loop are the parent's."""

    def __init__(self, experts: Experts) -> None:
        nn.Module.__init__(self)
        self.decode_rows = experts.decode_rows
        self.gate_up = [pack(weight) for weight in experts.gate_up_proj]
        self.down = [pack(weight) for weight in experts.down_proj]

    @property
    def num_experts(self) -> int:
        return len(self.gate_up)

    def weight_bytes(self) -> int:
        return sum(w.numel() * w.element_size() for w in (*self.gate_up, *self.down))

    def expert(self, x: torch.Tensor, index: int) -> torch.Tensor:
        gate, up = packed_linear(x, self.gate_up[index]).chunk(2, dim=-1)
        return packed_linear(F.silu(gate) * up, self.down[index])


def pack_weights(model: CausalLM) -> CausalLM:
    """Replace every projection of a bf16 or fp32 CPU ``model`` by its reordered form, in place: bf16
    as the tile kernel's layout where that kernel runs, else (and fp32 always) as oneDNN's."""
    if tiles_available("cpu", model.lm_head.weight.dtype):
        return tile_weights(model)
    return model.replace_projections(PackedLinear, PackedExperts)
