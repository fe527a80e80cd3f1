"""Engine API: batched scoring, generation, stop strings, sampling, limits."""

from __future__ import annotations

import pytest
import torch

from engine import Engine, EngineOptions
from engine.loader import load_model
from engine.tokenizer import ChatTokenizer


@pytest.fixture(scope="module")
def tiny_engine(tiny_fused_dir, default_engine) -> Engine:
    # The tiny model has no tokenizer of its own; scoring works on ids, so any tokenizer will do.
    return Engine(load_model(tiny_fused_dir), default_engine.tokenizer,
                  EngineOptions(prefill_chunk=5, max_batch_tokens=40))


def full_forward_logprobs(model, ids: list[int]) -> torch.Tensor:
    tensor = torch.tensor([ids])
    with torch.no_grad():
        logits = model.logits(model(tensor, model.new_cache(1)))[0]
    return torch.log_softmax(logits[:-1], -1).gather(1, tensor[0, 1:, None]).squeeze(1)


def test_batched_scores_equal_full_forward(tiny_engine):
    generator = torch.Generator().manual_seed(11)
    prefix = torch.randint(0, 160, (13,), generator=generator).tolist()
    continuations = [torch.randint(0, 160, (n,), generator=generator).tolist() for n in (1, 17, 4, 0, 30, 9)]
    scores = tiny_engine.score(prefix, continuations)
    assert [s.token_ids for s in scores] == continuations
    for seq, scored in zip(continuations, scores):
        if not seq:
            assert scored.logprobs.numel() == 0
            continue
        expected = full_forward_logprobs(tiny_engine.model, prefix + seq)[len(prefix) - 1 :]
        torch.testing.assert_close(scored.logprobs, expected, rtol=1e-4, atol=1e-4)
        assert torch.all(scored.entropies >= 0)
        assert torch.all(scored.entropies <= torch.log(torch.tensor(160.0)) + 1e-4)


def test_empty_prefix_uses_bos(tiny_engine):
    seq = [5, 6, 7, 8]
    scored = tiny_engine.score([], [seq])[0]
    expected = full_forward_logprobs(tiny_engine.model, [tiny_engine.config.bos_token_id, *seq])
    torch.testing.assert_close(scored.logprobs, expected, rtol=1e-4, atol=1e-4)


def test_context_limit_is_enforced(tiny_engine):
    with pytest.raises(ValueError, match="exceed the model's context of 1024"):
        tiny_engine.score([1] * 1000, [[2] * 30])


def test_greedy_generation_follows_argmax(tiny_engine):
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    result = tiny_engine.generate(prompt, max_new_tokens=12)
    ids = list(prompt)
    for _ in range(len(result.token_ids)):
        with torch.no_grad():
            logits = tiny_engine.model.logits(tiny_engine.model(torch.tensor([ids]), tiny_engine.model.new_cache(1)))
        ids.append(int(logits[0, -1].argmax()))
    assert result.token_ids == ids[len(prompt) :]
    assert result.finish_reason in ("length", "eos")


def test_sampling_is_seeded(default_engine):
    prompt = "Once upon a time"
    first = default_engine.generate(prompt, max_new_tokens=15, temperature=1.0, top_p=0.9, top_k=50, seed=3)
    again = default_engine.generate(prompt, max_new_tokens=15, temperature=1.0, top_p=0.9, top_k=50, seed=3)
    other = [default_engine.generate(prompt, max_new_tokens=15, temperature=1.0, seed=s).token_ids for s in (4, 5)]
    assert first.token_ids == again.token_ids
    assert any(o != first.token_ids for o in other)


def test_stop_string_cuts_output(default_engine):
    prompt = default_engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Count from one to ten."}])
    free = default_engine.generate(prompt, max_new_tokens=30)
    assert "5" in free.text
    stopped = default_engine.generate(prompt, max_new_tokens=30, stop=["zebra", "5"])
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index("5")]
    assert len(stopped.token_ids) < len(free.token_ids)


def test_chat_template_and_tokenizer_round_trip(default_engine):
    tokenizer: ChatTokenizer = default_engine.tokenizer
    text = "Numbers 12345, code `x_y = f(3.14)` and émigré text."
    assert tokenizer.decode(tokenizer.encode(text)) == text
    digits = tokenizer.encode("12345")
    assert len(digits) == 5  # SmolLM2 splits digits one by one
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.token_to_id("<|im_end|>") in default_engine.config.eos_token_ids


def test_tail_scores_only_the_last_tokens(tiny_engine):
    generator = torch.Generator().manual_seed(12)
    prefix = torch.randint(0, 160, (6,), generator=generator).tolist()
    continuations = [torch.randint(0, 160, (n,), generator=generator).tolist() for n in (2, 9, 14)]
    full = tiny_engine.score(prefix, continuations)
    tail = tiny_engine.score(prefix, continuations, entropy=False, tail=3)
    for whole, part in zip(full, tail):
        torch.testing.assert_close(part.logprobs[-3:], whole.logprobs[-3:], rtol=1e-5, atol=1e-5)
        assert torch.isnan(part.logprobs[:-3]).all()
        assert torch.isnan(part.entropies).all()


def test_length_buckets_bound_padding_and_cover_every_row(tiny_engine):
    lengths = [5, 40, 6, 7, 39, 20, 21, 1, 38, 22]
    batches = tiny_engine._length_buckets([[0] * n for n in lengths])
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        padded = longest * len(batch)
        assert padded <= tiny_engine.options.max_batch_tokens or len(batch) == 1
        assert padded - sum(lengths[i] for i in batch) <= tiny_engine.options.max_padding * padded
