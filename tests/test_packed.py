"""bf16 weights reordered for oneDNN once: the same numbers as plain bf16 matmuls."""

from __future__ import annotations

import pytest
import torch
from conftest import our_logits

from devtools.mellum import TINY_MELLUM
from engine import Engine, EngineOptions
from engine.loader import load_model
from engine.packed import PackedExperts, PackedLinear, pack_bf16, packing_available

pytestmark = pytest.mark.skipif(not packing_available("cpu", torch.bfloat16),
                                reason="this CPU has no oneDNN bf16 support")


def test_packed_tiny_mellum_equals_plain_bf16(tiny_fused_dir):
    ids = torch.randint(0, TINY_MELLUM["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(6))
    plain = load_model(tiny_fused_dir, dtype=torch.bfloat16)
    packed = pack_bf16(load_model(tiny_fused_dir, dtype=torch.bfloat16))
    assert any(isinstance(m, PackedExperts) for m in packed.modules())
    assert isinstance(packed.lm_head, PackedLinear)
    reference, ours = our_logits(plain, ids).float(), our_logits(packed, ids).float()
    # Same bf16 products; only the order of fp32 accumulation inside oneDNN may differ.
    assert (ours - reference).abs().max() <= 0.02 * reference.abs().max()
    assert (ours.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.95
    # One row at a time (the decode path through packed experts) against plain bf16 doing the same.
    decoded = {}
    for name, model in (("plain", plain), ("packed", packed)):
        cache, steps = model.new_cache(1), []
        with torch.no_grad():
            for t in range(ids.shape[1]):
                steps.append(model.logits(model(ids[:1, t : t + 1], cache)).float())
        decoded[name] = torch.cat(steps, 1)
    assert (decoded["packed"] - decoded["plain"]).abs().max() <= 0.02 * reference.abs().max()


def test_engine_packs_bf16_on_the_cpu_only_when_not_quantised_or_compiled(default_engine):
    assert isinstance(Engine.load(dtype=torch.bfloat16).model.lm_head, PackedLinear)
    assert not isinstance(default_engine.model.lm_head, PackedLinear)  # fp32
    assert not isinstance(Engine.load(dtype=torch.bfloat16, quantize="int8").model.lm_head, PackedLinear)
    compiled = Engine.load(dtype=torch.bfloat16, options=EngineOptions(compile_model=True))
    assert isinstance(compiled.model.lm_head, torch.nn.Linear)
