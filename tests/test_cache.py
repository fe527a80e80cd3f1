"""KV cache: chunked prefill, incremental decode and the sliding ring against one full forward."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_logits_close, our_logits

from devtools.mellum import TINY_MELLUM
from engine.cache import ATTEND_STEP, GROWTH_FACTOR, FullKV, KVShape, RingKV
from engine.loader import load_model


@pytest.fixture(scope="module")
def model(tiny_fused_dir):
    return load_model(tiny_fused_dir)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, TINY_MELLUM["vocab_size"], (2, 45), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("chunk", [1, 3, 8, 9, 16])
def test_chunked_prefill_equals_one_shot(model, ids, chunk):
    assert_logits_close(our_logits(model, ids, chunk=chunk), our_logits(model, ids))


def test_decode_after_prefill_equals_full_forward(model, ids):
    full = our_logits(model, ids)
    cache = model.new_cache(2)
    with torch.no_grad():
        steps = [model.logits(model(ids[:, :20], cache))]
        steps += [model.logits(model(ids[:, t : t + 1], cache)) for t in range(20, ids.shape[1])]
    assert_logits_close(torch.cat(steps, dim=1), full)


def test_sliding_layers_hold_window_positions_while_full_layers_grow(model):
    window = TINY_MELLUM["sliding_window"]
    cache = model.new_cache(1)
    sliding = [i for i, kind in enumerate(TINY_MELLUM["layer_types"]) if kind == "sliding_attention"]
    full = [i for i, kind in enumerate(TINY_MELLUM["layer_types"]) if kind == "full_attention"]
    per_position = 2 * TINY_MELLUM["num_key_value_heads"] * TINY_MELLUM["head_dim"] * 4
    with torch.no_grad():
        for _ in range(100):
            model(torch.randint(0, 100, (1, 1)), cache)
            for layer in sliding:
                assert cache.layers[layer].stored_positions == window
    assert cache.offset == 100
    for layer in full:
        assert 100 <= cache.layers[layer].stored_positions < 100 + 256
    expected = (len(full) * cache.layers[full[0]].stored_positions + len(sliding) * window) * per_position
    assert cache.nbytes() == expected


def test_a_growing_full_layer_holds_at_most_a_quarter_more_than_its_positions():
    layer = FullKV(KVShape(1, 1, 4, torch.float32, torch.device("cpu")), growth=256)
    regrowths, pointer, worst = 0, None, 0.0
    for position in range(1, 6001):
        layer.update(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4))
        regrowths += layer.keys.data_ptr() != pointer
        pointer = layer.keys.data_ptr()
        assert layer.stored_positions <= GROWTH_FACTOR * position + 256  # + rounding to whole blocks of 256
        if position > 4096:
            worst = max(worst, layer.stored_positions / position)
    assert worst <= GROWTH_FACTOR + 256 / 4096  # doubling would reach 2x just past a power of two
    assert regrowths <= 16  # still amortised: geometric growth, not a copy every few positions


def test_reserve_avoids_regrowth(model):
    cache = model.new_cache(1)
    cache.reserve(1000)
    before = cache.layers[3].keys.data_ptr()
    with torch.no_grad():
        model(torch.randint(0, 100, (1, 600)), cache)
        model(torch.randint(0, 100, (1, 300)), cache)
    assert cache.layers[3].keys.data_ptr() == before


def test_routing_statistics_count_every_routed_token(model):
    from compressor.service.metrics import Metrics

    stats = model.track_routing()
    try:
        with torch.no_grad():
            model(torch.randint(0, 100, (2, 11)), model.new_cache(2))
        sparse = [i for i, kind in enumerate(TINY_MELLUM["mlp_layer_types"]) if kind == "sparse"]
        assert sorted(stats.counts) == sparse
        for hits in stats.counts.values():
            assert hits.shape == (TINY_MELLUM["num_experts"],)
            assert int(hits.sum()) == 2 * 11 * TINY_MELLUM["num_experts_per_tok"]
        metrics = Metrics()

        def published() -> float:
            return sum(metrics.registry.get_sample_value("focal_expert_tokens_total", {"layer": str(layer),
                                                                                       "expert": str(e)}) or 0
                       for layer in sparse for e in range(TINY_MELLUM["num_experts"]))

        metrics.record_routing({layer: hits.tolist() for layer, hits in stats.counts.items()})
        assert published() == len(sparse) * 2 * 11 * TINY_MELLUM["num_experts_per_tok"]
        with torch.no_grad():  # cumulative counts, published again: a counter that adds only what is new
            model(torch.randint(0, 100, (1, 5)), model.new_cache(1))
        metrics.record_routing({layer: hits.tolist() for layer, hits in stats.counts.items()})
        assert published() == len(sparse) * (2 * 11 + 5) * TINY_MELLUM["num_experts_per_tok"]
    finally:
        model.track_routing(False)


def test_single_row_expert_path_equals_sorted_path(model, ids):
    """Decode (one row) runs each routed expert in place; batches sort rows by expert. Same result,
    and a one-sequence decode through the model matches its full forward."""
    import engine.model as engine_model

    moe = next(m for m in model.modules() if isinstance(m, engine_model.SparseMoe))
    x = torch.randn(1, TINY_MELLUM["hidden_size"], generator=torch.Generator().manual_seed(3))
    weights, experts = moe.gate(x)
    with torch.no_grad():
        few = moe.experts(x, weights, experts)
        sorted_path = moe.experts.sorted_by_expert(x, weights, experts)
        torch.testing.assert_close(few, sorted_path, rtol=1e-6, atol=1e-6)
        cache = model.new_cache(1)
        steps = [model.logits(model(ids[:1, t : t + 1], cache)) for t in range(ids.shape[1])]
    assert_logits_close(torch.cat(steps, dim=1), our_logits(model, ids[:1]))


def test_decode_attends_over_few_distinct_lengths():
    """A decode step's keys are padded to ATTEND_STEP within the storage (oneDNN builds a kernel per
    new shape), and the padding is masked: positions after the step's own, or negative in a ring."""
    shape = KVShape(1, 2, 4, torch.float32, torch.device("cpu"))
    full, ring = FullKV(shape), RingKV(shape, window=2 * ATTEND_STEP)
    lengths: dict[str, set[int]] = {"full": set(), "ring": set()}
    for step in range(3 * ATTEND_STEP):
        for name, kv in (("full", full), ("ring", ring)):
            positions = kv.key_positions(1)
            keys, _ = kv.update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
            assert keys.shape[2] == positions.shape[0] <= kv.stored_positions
            reach = ring.window if kv is ring else step + 1
            visible = (positions >= 0) & (positions <= step) & (positions > step - reach)
            assert visible.sum() == min(step + 1, reach)
            lengths[name].add(keys.shape[2])
    assert len(lengths["ring"]) == 2 and len(lengths["full"]) <= 4
    reserved = FullKV(shape)
    reserved.reserve(50)
    reserved.update(torch.randn(1, 2, 49, 4), torch.randn(1, 2, 49, 4))
    keys, _ = reserved.update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
    assert keys.shape[2] == reserved.stored_positions == 50  # padding never grows an exact reservation
