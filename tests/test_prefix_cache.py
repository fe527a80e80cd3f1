"""Prefix KV reuse across calls: exact against recomputation, LRU under its byte budget."""

from __future__ import annotations

import pytest
import torch

from engine import Engine, EngineOptions
from engine.loader import load_model
from engine.prefix_cache import PrefixCache, boundary_hashes


@pytest.fixture(scope="module")
def tiny_model(tiny_fused_dir):
    return load_model(tiny_fused_dir)


def engines(model, tokenizer, budget: int = 64 << 20) -> tuple[Engine, Engine]:
    """The same model with a prefix cache of blocks of 4 (window 8: entries hold wrapped rings) and without."""
    cached = Engine(model, tokenizer, EngineOptions(prefill_chunk=7, max_batch_tokens=40, prefix_cache_bytes=budget,
                                                  prefix_block=4))
    plain = Engine(model, tokenizer, EngineOptions(prefill_chunk=7, max_batch_tokens=40, prefix_cache_bytes=0))
    return cached, plain


def random_ids(n: int, seed: int) -> list[int]:
    return torch.randint(1, 160, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def assert_same_scores(ours, reference) -> None:
    for a, b in zip(ours, reference, strict=True):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-5, equal_nan=True)
        torch.testing.assert_close(a.entropies, b.entropies, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_boundary_hashes_chain_over_whole_blocks():
    a = list(range(40))
    b = [*a[:20], 999, *a[21:]]
    ha, hb = boundary_hashes(a, 8), boundary_hashes(b, 8)
    assert len(ha) == 5 and len(boundary_hashes(a[:39], 8)) == 4
    assert ha[:2] == hb[:2]  # blocks 0-7 and 8-15 agree
    assert all(x != y for x, y in zip(ha[2:], hb[2:]))  # the change at 20 propagates down the chain
    assert boundary_hashes(a[8:16] + a[:8], 8)[1] != ha[1]  # order matters


def test_reused_prefix_scores_equal_recomputation(tiny_model, default_engine):
    cached, plain = engines(tiny_model, default_engine.tokenizer)
    instruction = random_ids(22, 1)
    question_a, question_b = random_ids(9, 2), random_ids(13, 3)
    rows = [random_ids(n, 10 + n) for n in (5, 11, 3, 17)]
    calls = [instruction, instruction + question_a, instruction + question_b, instruction + question_a,
             instruction[:20], instruction[:20] + question_b]
    for prefix in calls:
        assert_same_scores(cached.score(prefix, rows), plain.score(prefix, rows))
    stats = cached.prefix_cache.stats
    assert stats.lookups == len(calls)
    # First call: miss. Later ones reuse at least the instruction's 20 block-aligned tokens; the repeat of
    # instruction + question_a reuses its own 28; instruction[:20] is a whole entry (no token recomputed).
    assert stats.hits == len(calls) - 1
    assert stats.reused_tokens == 20 + 20 + 28 + 20 + 20


def test_generation_from_a_cached_prompt_equals_recomputation(tiny_model, default_engine):
    cached, plain = engines(tiny_model, default_engine.tokenizer)
    prompt = random_ids(26, 5)
    first = cached.generate(prompt, max_new_tokens=12)
    again = cached.generate(prompt, max_new_tokens=12)
    reference = plain.generate(prompt, max_new_tokens=12)
    assert first.token_ids == again.token_ids == reference.token_ids
    assert cached.prefix_cache.stats.hits == 1 and cached.prefix_cache.stats.reused_tokens == 24
    # Decoding into the copy handed out must not have touched the stored entry.
    assert_same_scores(cached.score(prompt, [prompt[:5]]), plain.score(prompt, [prompt[:5]]))


def test_lru_keeps_within_budget_and_evicts_least_recent(tiny_model, default_engine):
    probe, _ = engines(tiny_model, default_engine.tokenizer)
    probe.score(random_ids(16, 0), [[1]])
    entry_bytes = probe.prefix_cache.stats.bytes
    cached, _ = engines(tiny_model, default_engine.tokenizer, budget=2 * entry_bytes)
    a, b, c = random_ids(16, 1), random_ids(16, 2), random_ids(16, 3)
    for prefix in (a, b, a, c):  # a is used again after b, so b is the least recent when c arrives
        cached.score(prefix, [[1]])
    stats = cached.prefix_cache.stats
    assert stats.entries == 2 and stats.bytes <= 2 * entry_bytes and stats.evicted == 1
    before = stats.hits
    cached.score(a, [[1]])
    cached.score(c, [[1]])
    assert stats.hits == before + 2
    cached.score(b, [[1]])
    assert stats.hits == before + 2  # b was evicted


def test_entry_memory_is_the_kv_formula(tiny_model, default_engine):
    cached, _ = engines(tiny_model, default_engine.tokenizer)
    cached.score(random_ids(24, 4), [[1]])
    expected = tiny_model.config.kv_cache_bytes(24, 4) + tiny_model.config.hidden_size * 4  # + the last hidden state
    assert cached.prefix_cache.stats.bytes == expected


def test_budget_zero_turns_the_cache_off_and_bad_settings_are_refused(tiny_model, default_engine):
    _, plain = engines(tiny_model, default_engine.tokenizer)
    plain.score(random_ids(32, 6), [[1]])
    plain.score(random_ids(32, 6), [[1]])
    assert plain.prefix_cache.stats.lookups == 0 and plain.prefix_cache.stats.entries == 0
    with pytest.raises(ValueError, match="block must be at least 1"):
        PrefixCache(1 << 20, block=0)
    with pytest.raises(ValueError, match="budget must be >= 0"):
        PrefixCache(-1)


def test_default_model_reuses_a_shared_instruction(default_engine):
    instruction = default_engine.encode("You answer questions about the passages below, citing them exactly.\n\n")
    question = default_engine.encode("Question: Where is the Eiffel Tower?\n\n")
    passage = [default_engine.encode("The Eiffel Tower stands on the Champ de Mars in Paris.")]
    cold = Engine(default_engine.model, default_engine.tokenizer, EngineOptions(prefix_cache_bytes=0))
    default_engine.prefix_cache.clear()
    reused = default_engine.prefix_cache.stats.reused_tokens
    default_engine.score(instruction, passage)
    warm = default_engine.score(instruction + question, passage)
    assert default_engine.prefix_cache.stats.reused_tokens - reused == len(instruction) // 16 * 16
    assert_same_scores(warm, cold.score(instruction + question, passage))


def test_a_prefilled_prompt_holds_exactly_the_kv_formula(tiny_model, default_engine):
    _, plain = engines(tiny_model, default_engine.tokenizer)
    for length, reserve in ((50, 0), (300, 0), (50, 70)):
        cache, _ = plain.prefill_prefix(random_ids(length, length), reserve=reserve)
        assert cache.nbytes() == tiny_model.config.kv_cache_bytes(max(length, reserve), 4)
