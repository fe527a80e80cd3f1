"""Our engine against transformers' MellumForCausalLM on identical random weights (fp32)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_logits_close, our_logits

from devtools.mellum import FULL, SLIDING, TINY_MELLUM, hf_mellum, mellum_slice
from engine.config import from_hf_dict
from engine.loader import build_model, load_model
from engine.model import ForwardOptions


def reference_logits(hf, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(input_ids=ids).logits


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    torch.manual_seed(1)
    # 40 tokens: five times the sliding window of 8, and past YaRN's original 64/16... positions.
    return torch.randint(0, TINY_MELLUM["vocab_size"], (2, 40))


@pytest.mark.parametrize("layout", ["fused", "per_expert"])
def test_tiny_mellum_matches_transformers(layout, ids, tiny_hf, tiny_fused_dir, tiny_per_expert_dir):
    directory = tiny_fused_dir if layout == "fused" else tiny_per_expert_dir
    model = load_model(directory)
    assert_logits_close(our_logits(model, ids), reference_logits(tiny_hf, ids))


def test_tiny_mellum_chunked_prefill_matches_transformers(ids, tiny_hf, tiny_fused_dir):
    model = load_model(tiny_fused_dir)
    assert_logits_close(our_logits(model, ids, chunk=7), reference_logits(tiny_hf, ids))


@pytest.mark.parametrize("block,chunk", [(4, None), (5, 13), (3, 7), (16, 30)])
def test_query_blocks_match_transformers(ids, tiny_hf, tiny_fused_dir, block, chunk):
    """Long query runs are split into blocks that skip keys outside the causal band and the window."""
    model = load_model(tiny_fused_dir, options=ForwardOptions(query_block=block))
    assert_logits_close(our_logits(model, ids, chunk=chunk), reference_logits(tiny_hf, ids))


def test_yarn_and_window_matter(ids, tiny_hf, tiny_fused_dir):
    """The comparison can fail: a model without YaRN, or without the window, gives other logits."""
    ref = reference_logits(tiny_hf, ids)
    for change in ({"sliding_window": 1000}, {"rope_parameters": {
            FULL: {"rope_type": "default", "rope_theta": 500000.0},
            SLIDING: {"rope_type": "default", "rope_theta": 10000.0}}}):
        config = from_hf_dict({**TINY_MELLUM, **change})
        model = build_model(config, dict(tiny_hf.state_dict()), torch.float32)
        diff = (our_logits(model, ids) - ref).abs().max().item()
        assert diff > 1e-2, f"changing {list(change)} left the logits unchanged"


@pytest.mark.slow
def test_real_width_slice_matches_transformers():
    """Real Mellum2 widths (hidden 2304, 32/4 heads, 64 experts top-8, expert width 896, vocab 98304),
    two layers (sliding sparse + full dense), random weights."""
    config = mellum_slice([SLIDING, FULL], ["sparse", "dense"], sliding_window=16)
    hf = hf_mellum(config, seed=3)
    model = build_model(from_hf_dict(config), dict(hf.state_dict()), torch.float32)
    torch.manual_seed(4)
    ids = torch.randint(0, config["vocab_size"], (1, 48))
    assert_logits_close(our_logits(model, ids), reference_logits(hf, ids))
