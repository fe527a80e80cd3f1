"""Weights reordered once (oneDNN's layout, or bf16 as the engine's tiles where the CPU has AVX-512
BF16): the same numbers as plain matmuls of the dtype."""

from __future__ import annotations

import pytest
import torch
from conftest import our_logits

from devtools.mellum import TINY_MELLUM
from engine import Engine, EngineOptions
from engine.loader import load_model
from engine.packed import PackedExperts, PackedLinear, pack_weights, packing_available
from engine.tiles import TiledExperts, TiledLinear, tiles_available

BF16 = pytest.param(torch.bfloat16, 0.02, marks=pytest.mark.skipif(
    not packing_available("cpu", torch.bfloat16), reason="this CPU has no oneDNN bf16 support"))
FP32 = pytest.param(torch.float32, 1e-5, marks=pytest.mark.skipif(
    not packing_available("cpu", torch.float32), reason="this PyTorch has no oneDNN"))


def _onednn(model):
    """oneDNN's layout whatever the CPU: where pack_weights takes the bf16 tiles, this route still runs
    on CPUs without AVX-512 BF16 and must stay tested."""
    return model.replace_projections(PackedLinear, PackedExperts)


# Same products in the same dtype; only the order of the sums differs: bf16 within 2% of the largest
# logit, fp32 within 1e-5 (rounding to bf16 or tf32 anywhere would break that).
@pytest.mark.parametrize("route", ["pack_weights", "oneDNN"])
@pytest.mark.parametrize(("dtype", "tolerance"), [BF16, FP32])
def test_packed_tiny_mellum_equals_plain(tiny_fused_dir, dtype, tolerance, route):
    ids = torch.randint(0, TINY_MELLUM["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(6))
    plain = load_model(tiny_fused_dir, dtype=dtype)
    packed = (pack_weights if route == "pack_weights" else _onednn)(load_model(tiny_fused_dir, dtype=dtype))
    tiled = route == "pack_weights" and tiles_available("cpu", dtype)
    linear, experts = (TiledLinear, TiledExperts) if tiled else (PackedLinear, PackedExperts)
    assert any(isinstance(m, experts) for m in packed.modules())
    assert isinstance(packed.lm_head, linear)
    reference, ours = our_logits(plain, ids).float(), our_logits(packed, ids).float()
    assert (ours - reference).abs().max() <= tolerance * reference.abs().max()
    assert (ours.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.95
    decoded = {}  # one row at a time: the decode path through packed experts
    for name, model in (("plain", plain), ("packed", packed)):
        cache, steps = model.new_cache(1), []
        with torch.no_grad():
            for t in range(ids.shape[1]):
                steps.append(model.logits(model(ids[:1, t : t + 1], cache)).float())
        decoded[name] = torch.cat(steps, 1)
    # The bf16 tiles run a decode token's experts in one call, fp32 between the matmuls where the plain
    # path rounds to bf16 after each: a near-tie in a later router may then go the other way at a few
    # positions, so the bound holds at nine positions in ten and the top-1 tokens mostly agree.
    gap = (decoded["packed"] - decoded["plain"]).abs().amax(-1).flatten()
    assert gap.quantile(0.9) <= tolerance * reference.abs().max()
    assert (decoded["packed"].argmax(-1) == decoded["plain"].argmax(-1)).float().mean() >= 0.9


@pytest.mark.skipif(not packing_available("cpu", torch.bfloat16), reason="this CPU has no oneDNN bf16 support")
def test_engine_packs_on_the_cpu_only_when_not_quantised_or_compiled(default_engine):
    bf16 = TiledLinear if tiles_available("cpu", torch.bfloat16) else PackedLinear
    assert isinstance(Engine.load(dtype=torch.bfloat16).model.lm_head, bf16)
    assert isinstance(default_engine.model.lm_head, PackedLinear)  # fp32
    assert not isinstance(Engine.load(dtype=torch.bfloat16, quantize="int8").model.lm_head, PackedLinear | TiledLinear)
    compiled = Engine.load(dtype=torch.bfloat16, options=EngineOptions(compile_model=True))
    assert isinstance(compiled.model.lm_head, torch.nn.Linear)
