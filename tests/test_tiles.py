"""The bf16 tile kernel (engine/bf16_matmul.c through engine.tiles): its layout, and its products
against fp32 arithmetic on the same bf16 numbers, at the row and column counts where its blocks
have remainders."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from devtools.mellum import mellum_slice
from engine.config import from_hf_dict
from engine.loader import load_model
from engine.model import Experts, Router
from engine.packed import pack_weights
from engine.quant import quantize_int8
from engine.tiles import TILE, TiledExperts, TiledRouter, tiled_linear, tiles_available, to_tiles

pytestmark = pytest.mark.skipif(not tiles_available("cpu", torch.bfloat16),
                                reason="the tile kernel needs AVX-512 BF16 and the built native kernels")


def test_a_tile_holds_sixty_four_rows_with_each_pair_of_inputs_side_by_side() -> None:
    weight = torch.arange(70 * 6, dtype=torch.float32).reshape(70, 6).bfloat16()
    tiles = to_tiles(weight)
    assert tiles.shape == (2, 3, TILE, 2)
    for t, p, j, e in [(0, 0, 0, 0), (0, 2, 63, 1), (1, 1, 3, 0), (1, 2, 5, 1)]:
        assert tiles[t, p, j, e] == weight[TILE * t + j, 2 * p + e]
    assert (tiles[1, :, 6:] == 0).all()  # rows 70..127 are padding


def test_an_odd_input_width_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="K must be even"):
        to_tiles(torch.zeros(16, 7, dtype=torch.bfloat16))


# Rows: one (decode), a block of six and its remainders; columns: partial tiles and partial groups of
# four tiles; inputs: short, long, and one that is not a multiple of the 32 a vector holds.
@pytest.mark.parametrize(("rows", "columns", "inputs"), [
    (1, 1, 2), (1, 37, 64), (1, 2304, 896), (2, 100, 130), (5, 64, 2304), (6, 65, 34), (7, 200, 96),
    (13, 1792, 2304), (64, 48, 4096)])
def test_products_equal_fp32_arithmetic_rounded_once(rows, columns, inputs) -> None:
    generator = torch.Generator().manual_seed(rows * 1000 + columns)
    weight = torch.randn(columns, inputs, generator=generator).bfloat16()
    x = torch.randn(rows, inputs, generator=generator).bfloat16()
    exact = x.double() @ weight.double().T
    ours = tiled_linear(x, to_tiles(weight), columns)
    assert ours.dtype == torch.bfloat16 and ours.shape == (rows, columns)
    # One rounding to bf16 (half a unit in the last place, 2^-9 relative) plus fp32 sums in another order.
    bound = exact.abs() * 2**-8 + 1e-5 * inputs**0.5 * exact.abs().max()
    assert ((ours.double() - exact).abs() <= bound).all()


def test_leading_dimensions_bias_and_strided_rows() -> None:
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(40, 64, generator=generator).bfloat16()
    bias = torch.randn(40, generator=generator).bfloat16()
    x = torch.randn(2, 3, 128, generator=generator).bfloat16()[..., ::2]  # not contiguous
    ours = tiled_linear(x, to_tiles(weight), 40, bias)
    reference = torch.nn.functional.linear(x.float(), weight.float(), bias.float())
    assert ours.shape == (2, 3, 40)
    assert (ours.float() - reference).abs().max() <= 0.02 * reference.abs().max()


def test_a_decode_row_through_its_experts_in_one_call_equals_the_expert_by_expert_path() -> None:
    """The fused MoE kernel (one call for a token's top-k experts) against the parent's row-by-row
    loop on the same tiles and on the plain weights, in bf16, and against fp32 arithmetic."""
    generator = torch.Generator().manual_seed(9)
    config = from_hf_dict(mellum_slice())
    config = replace(config, hidden_size=256, moe_intermediate_size=96, num_experts=16, num_experts_per_tok=4)
    plain = Experts(config, decode_rows=1)
    with torch.no_grad():
        plain.gate_up_proj.copy_(torch.randn(plain.gate_up_proj.shape, generator=generator) / 16)
        plain.down_proj.copy_(torch.randn(plain.down_proj.shape, generator=generator) / 10)
    plain = plain.bfloat16()
    tiled = TiledExperts(plain)
    x = torch.randn(3, 256, generator=generator).bfloat16()
    weights = torch.softmax(torch.randn(3, 4, generator=generator), -1).bfloat16()
    chosen = torch.stack([torch.randperm(16, generator=generator)[:4] for _ in range(3)])
    with torch.no_grad():
        fused = tiled.row_by_row(x, weights, chosen)
        one_by_one = Experts.row_by_row(tiled, x, weights, chosen)
        reference = plain.float().row_by_row(x.float(), weights.float(), chosen)
    assert fused.dtype == torch.bfloat16 and fused.shape == (3, 256)
    largest = reference.abs().max()
    for ours in (fused, one_by_one):
        assert (ours.float() - reference).abs().max() <= 0.02 * largest
    assert (fused.float() - reference).abs().max() <= (one_by_one.float() - reference).abs().max() + 0.005 * largest


def test_bf16_and_int8_models_route_through_the_tile_kernel_with_the_same_scores(tiny_fused_dir) -> None:
    plain = load_model(tiny_fused_dir, dtype=torch.bfloat16)
    routers = {name: m for name, m in plain.named_modules() if isinstance(m, Router)}
    for model in (pack_weights(load_model(tiny_fused_dir, dtype=torch.bfloat16)),
                  quantize_int8(load_model(tiny_fused_dir, dtype=torch.bfloat16))):
        tiled = {name: m for name, m in model.named_modules() if isinstance(m, Router)}
        assert tiled.keys() == routers.keys() and all(isinstance(m, TiledRouter) for m in tiled.values())
        x = torch.randn(5, plain.config.hidden_size, generator=torch.Generator().manual_seed(2)).bfloat16()
        for name, router in routers.items():
            exact = x.double() @ router.weight.double().T
            assert ((tiled[name].scores(x).double() - exact).abs() <= exact.abs() * 2**-8 + 1e-4).all()
    assert not any(isinstance(m, TiledRouter) for m in load_model(tiny_fused_dir, dtype=torch.float32).modules())
