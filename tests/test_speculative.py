"""Speculative decoding: the KV cache rewinds exactly (sliding ring included), greedy output is plain
greedy decoding's token for token whatever the drafter proposes, and speculative sampling keeps
the model's distribution (a statistical test on a tiny Mellum2)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import assert_logits_close, our_logits

from devtools.mellum import TINY_MELLUM
from engine import Engine, EngineOptions, PromptLookup
from engine.decoding import Sampling
from engine.loader import load_model

WINDOW = TINY_MELLUM["sliding_window"]
EOS = TINY_MELLUM["eos_token_id"]


@pytest.fixture(scope="module")
def tiny_engine(tiny_fused_dir, default_engine) -> Engine:
    # The tiny model has no tokenizer of its own; generation works on ids, so any tokenizer will do.
    return Engine(load_model(tiny_fused_dir), default_engine.tokenizer, EngineOptions(prefill_chunk=5))


class Scripted:
    """A drafter that proposes the tokens of a script at the sequence's position, with every
    ``corrupt``-th proposal replaced by a wrong token: long accepted runs and rejections."""

    def __init__(self, script: list[int], corrupt: int, vocab: int) -> None:
        self.script, self.corrupt, self.vocab = script, corrupt, vocab
        self.length = self.calls = 0

    def start(self, ids: list[int]) -> None:
        self.prompt, self.length = len(ids), len(ids)

    def extend(self, ids: list[int]) -> None:
        self.length += len(ids)

    def propose(self, limit: int) -> list[int]:
        self.calls += 1
        at = self.length - self.prompt
        draft = list(self.script[at : at + limit])
        if draft and self.calls % self.corrupt == 0:
            middle = len(draft) // 2
            draft[middle] = (draft[middle] + 1) % self.vocab
        return draft


@pytest.mark.parametrize("prefix", [3, WINDOW - 2, WINDOW, 2 * WINDOW + 1])
@pytest.mark.parametrize("tentative,keep", [(4, 0), (5, 2), (WINDOW, 3), (WINDOW, WINDOW)])
def test_rewind_leaves_the_cache_of_the_kept_tokens(tiny_engine, prefix, tentative, keep):
    model = tiny_engine.model
    ids = torch.randint(0, TINY_MELLUM["vocab_size"], (1, prefix + tentative + 6),
                        generator=torch.Generator().manual_seed(prefix * 31 + tentative))
    wrong = (ids[:, prefix + keep : prefix + tentative] + 1) % TINY_MELLUM["vocab_size"]
    cache = model.new_cache(1)
    with torch.no_grad():
        model(ids[:, :prefix], cache)
        mark = cache.mark(tentative)
        model(torch.cat((ids[:, prefix : prefix + keep], wrong), dim=1), cache)
        cache.rewind(mark, keep)
        assert cache.offset == prefix + keep
        rest = ids[:, prefix + keep :]
        after = model.logits(model(rest, cache))
    assert_logits_close(after, our_logits(model, ids)[:, prefix + keep :])


def test_a_step_longer_than_the_window_cannot_be_marked(tiny_engine):
    cache = tiny_engine.model.new_cache(1)
    with pytest.raises(ValueError, match="exceeds the sliding window"):
        cache.mark(WINDOW + 1)


def test_prompt_lookup_proposes_what_followed_the_latest_longest_match():
    drafter = PromptLookup(max_ngram=3, min_ngram=1)
    drafter.start([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3])
    # "1 2 3" occurred at the start, followed by "4 5 9"; "2 3" most recently by "7 8".
    assert drafter.propose(3) == [4, 5, 9]
    drafter.extend([7])
    assert drafter.propose(4) == [8, 1, 2, 3]  # "2 3 7" occurred before, followed by "8 1 2 3"
    drafter.extend([6])
    assert drafter.propose(4) == []  # "6" never occurred before
    assert drafter.propose(0) == []
    with pytest.raises(ValueError, match="min_ngram"):
        PromptLookup(max_ngram=1, min_ngram=2)


@pytest.mark.parametrize("corrupt", [1, 2, 5])
def test_greedy_speculation_matches_plain_greedy_across_the_window(tiny_engine, corrupt):
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    plain = tiny_engine.generate(prompt, max_new_tokens=40)
    script = plain.token_ids + [1] * 8
    drafter = Scripted(script, corrupt, TINY_MELLUM["vocab_size"])
    fast = tiny_engine.generate(prompt, max_new_tokens=40, drafter=drafter, draft_tokens=6)
    assert fast.token_ids == plain.token_ids
    assert fast.finish_reason == plain.finish_reason
    assert fast.speculation.steps < len(plain.token_ids)
    assert 0 < fast.speculation.accepted < fast.speculation.proposed
    looked_up = tiny_engine.generate(prompt, max_new_tokens=40, drafter=PromptLookup())
    assert looked_up.token_ids == plain.token_ids


def test_draft_length_is_capped_by_the_sliding_window(tiny_engine):
    assert tiny_engine.longest_draft == WINDOW - 1
    prompt = [7, 7, 7, 7]
    plain = tiny_engine.generate(prompt, max_new_tokens=30)
    drafter = Scripted(plain.token_ids + [0] * 40, 3, TINY_MELLUM["vocab_size"])
    fast = tiny_engine.generate(prompt, max_new_tokens=30, drafter=drafter, draft_tokens=50)
    assert fast.token_ids == plain.token_ids


def test_greedy_speculation_on_the_default_model_copies_its_evidence(default_engine):
    evidence = ("The Hubble Space Telescope was launched on 24 April 1990 aboard the Space Shuttle Discovery. "
                "It orbits at about 540 kilometres and completes one orbit every 95 minutes.")
    prompt = default_engine.tokenizer.apply_chat_template([{"role": "user", "content": (
        f"Evidence: {evidence}\n\nQuestion: When was the Hubble Space Telescope launched, and aboard what? "
        "Answer by quoting the evidence.")}])
    plain = default_engine.generate(prompt, max_new_tokens=48)
    fast = default_engine.generate(prompt, max_new_tokens=48, drafter=PromptLookup())
    assert fast.token_ids == plain.token_ids
    assert fast.speculation.accepted > 0
    assert fast.speculation.steps < len(plain.token_ids)


def test_stop_strings_and_limits_hold_under_speculation(default_engine):
    prompt = default_engine.tokenizer.apply_chat_template([{"role": "user", "content": "Count from one to ten."}])
    for stop in ([], ["5"]):
        plain = default_engine.generate(prompt, max_new_tokens=30, stop=stop)
        fast = default_engine.generate(prompt, max_new_tokens=30, stop=stop, drafter=PromptLookup())
        assert (fast.text, fast.token_ids, fast.finish_reason) == (plain.text, plain.token_ids, plain.finish_reason)
    assert len(default_engine.generate(prompt, max_new_tokens=3, drafter=PromptLookup()).token_ids) <= 3


def _exact_pairs(engine: Engine, prompt: list[int], sampling: Sampling) -> dict[tuple[int, int], float]:
    """The exact probability of the first two sampled tokens ((t, EOS) when decoding ends at t)."""
    model = engine.model
    with torch.no_grad():
        first = sampling.distribution(model.logits(model(torch.tensor([prompt]), model.new_cache(1)))[0, -1])
        exact = {}
        for token in torch.nonzero(first).flatten().tolist():
            if token == EOS:
                exact[(EOS, EOS)] = float(first[token])
                continue
            ids = torch.tensor([[*prompt, token]])
            second = sampling.distribution(model.logits(model(ids, model.new_cache(1)))[0, -1])
            for after in torch.nonzero(second).flatten().tolist():
                exact[(token, after)] = float(first[token] * second[after])
    return exact


def test_speculative_sampling_keeps_the_model_distribution(tiny_engine):
    prompt = [11, 42, 7, 99, 3]
    sampling = Sampling(temperature=1.0, top_k=6)
    exact = _exact_pairs(tiny_engine, prompt, sampling)
    # Drafts that are sometimes right and often wrong: the likeliest second token after the likeliest
    # first one (on even seeds), and a token the model finds unlikely (on odd seeds).
    drafts = (max(exact, key=exact.get)[1], min(exact, key=exact.get)[1])

    class Fixed:
        def __init__(self, token: int) -> None:
            self.token = token

        def start(self, ids):
            pass

        def extend(self, ids):
            pass

        def propose(self, limit):
            return [self.token][:limit]

    samples = 3000
    counts = Counter()
    accepted = 0
    for seed in range(samples):
        out = tiny_engine.generate(prompt, max_new_tokens=2, temperature=1.0, top_k=6, seed=seed,
                                   drafter=Fixed(drafts[seed % 2]))
        ids = out.token_ids + [EOS] * (2 - len(out.token_ids))
        counts[tuple(ids)] += 1
        accepted += out.speculation.accepted
    assert 0 < accepted < samples  # the rule both kept and rejected drafts
    distance = 0.5 * sum(abs(counts[k] / samples - exact.get(k, 0.0)) for k in set(exact) | set(counts))
    # Sampling noise alone gives about 0.04 over these 36 outcomes; keeping every draft would move
    # most of the second token's mass onto the two drafted tokens.
    assert distance < 0.09, f"total variation {distance:.3f} from the exact distribution"
    assert set(counts) <= set(exact)
