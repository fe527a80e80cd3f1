"""bf16 weights in the layout of the engine's own matmul kernel (``engine/bf16_matmul.c``), for CPUs
with AVX-512 BF16.

oneDNN's reordered bf16 weights (``engine.packed``) are fast for prefill, but a decode step through
them reads the weights well below the memory's rate, and a one-row matmul is nothing but that read.
The kernel's tiles serve every row count from one copy: a decode step streams them front to back,
a prefill reuses each of them from the cache across many rows. The layout is [N/64, K/2, 64, 2]:
tile t holds output rows 64t..64t+63, each adjacent pair of inputs side by side (what one vdpbf16ps
instruction multiplies); N is padded to a multiple of 64 with zero rows. Memory is that of the plain
weight (plus the padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine import native
from engine.huge_pages import huge_page_empty, on_huge_pages
from engine.model import CausalLM, Experts, Router, SparseMoe

TILE = 64  # output rows per tile (TILE_ROWS in engine/bf16_matmul.c)


def tiles_available(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether bf16 weights on ``device`` can run through the tile kernel."""
    return torch.device(device).type == "cpu" and dtype == torch.bfloat16 and native.bf16_matmul_available()


def to_tiles(weight: torch.Tensor) -> torch.Tensor:
    """A bf16 weight [N, K] (K even) as tiles [ceil(N/64), K/2, 64, 2]."""
    rows, inputs = weight.shape
    if inputs % 2:
        raise ValueError(f"the tile layout pairs inputs: K must be even, got {inputs}")
    padded = F.pad(weight.detach().to(torch.bfloat16), (0, 0, 0, -rows % TILE))
    return padded.reshape(-1, TILE, inputs // 2, 2).transpose(1, 2).contiguous()


def stacked_tiles(weights: torch.Tensor) -> torch.Tensor:
    """Every expert's weight [E, N, K] as tiles, one tensor [E, ceil(N/64), K/2, 64, 2], on huge pages."""
    first = to_tiles(weights[0])
    stacked = huge_page_empty((weights.shape[0], *first.shape), first.dtype)
    stacked[0] = first
    for index in range(1, weights.shape[0]):
        stacked[index] = to_tiles(weights[index])
    return stacked


def tiled_linear(x: torch.Tensor, tiles: torch.Tensor, out_features: int,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    out = native.bf16_matmul(x, tiles, out_features)
    return out if bias is None else out + bias


class TiledLinear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("tiles", on_huge_pages(to_tiles(linear.weight)))
        self.bias = linear.bias
        self.out_features = linear.out_features

    def weight_bytes(self) -> int:
        return self.tiles.numel() * self.tiles.element_size()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tiled_linear(x, self.tiles, self.out_features, self.bias)


class TiledExperts(Experts):
    """Each expert's two weights as tiles, all experts in one tensor per kind; the sorted-slice loop of
    prefill is the parent's, a decode row is one kernel call for all its experts."""

    def __init__(self, experts: Experts) -> None:
        nn.Module.__init__(self)
        self.decode_rows = experts.decode_rows
        self.gate_up = stacked_tiles(experts.gate_up_proj)
        self.down = stacked_tiles(experts.down_proj)
        self.inter, self.hidden = experts.down_proj.shape[2], experts.down_proj.shape[1]

    @property
    def num_experts(self) -> int:
        return self.gate_up.shape[0]

    def weight_bytes(self) -> int:
        return sum(w.numel() * w.element_size() for w in (self.gate_up, self.down))

    def expert(self, x: torch.Tensor, index: int) -> torch.Tensor:
        gate, up = tiled_linear(x, self.gate_up[index], 2 * self.inter).chunk(2, dim=-1)
        return tiled_linear(F.silu(gate) * up, self.down[index], self.hidden)

    def row_by_row(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        return torch.cat([native.bf16_moe(x[row : row + 1], weights[row], experts[row], self.gate_up, self.down,
                                          self.inter) for row in range(x.shape[0])])


class TiledRouter(Router):
    """The router's scores through the tile kernel: a bf16 matmul of one row by a few dozen experts
    costs oneDNN far more than the read (it reorders the weight on every call)."""

    def __init__(self, router: Router) -> None:
        nn.Module.__init__(self)
        self.weight = router.weight
        self.top_k, self.normalize = router.top_k, router.normalize
        self.tiles = to_tiles(router.weight)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return native.bf16_matmul(x, self.tiles, self.weight.shape[0])


def tile_routers(model: CausalLM) -> CausalLM:
    """Route through the tile kernel in every sparse layer of a bf16 CPU ``model`` whose projections
    are tiled or int8, in place; a no-op where the kernel cannot run."""
    for module in model.modules():
        if isinstance(module, SparseMoe) and type(module.gate) is Router:
            weight = module.gate.weight
            if tiles_available(weight.device, weight.dtype) and weight.shape[1] % 2 == 0:
                module.gate = TiledRouter(module.gate)
    return model


def tile_weights(model: CausalLM) -> CausalLM:
    """Replace every projection and router of a bf16 CPU ``model`` by its tiled form, in place."""
    return tile_routers(model.replace_projections(TiledLinear, TiledExperts))
