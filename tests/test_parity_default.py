"""The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers reading the same file."""

from __future__ import annotations

import math

import pytest
import torch

from engine import default_model_path

PARAGRAPH = (
    "The Amazon rainforest covers much of the Amazon basin of South America. The basin spans seven million "
    "square kilometres, of which five and a half million are covered by the rainforest. The region includes "
    "territory belonging to nine nations and 3,344 formally acknowledged indigenous territories."
)


@pytest.fixture(scope="module")
def hf_default():
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                dtype=torch.float32).eval()


def test_default_model_logits_and_perplexity_match_transformers(default_engine, hf_default):
    ids = default_engine.encode(PARAGRAPH)
    assert len(ids) > 50
    tensor = torch.tensor([ids])
    with torch.no_grad():
        ref = hf_default(input_ids=tensor).logits[0]
        cache = default_engine.model.new_cache(1)
        ours = default_engine.model.logits(default_engine.model(tensor, cache))[0]
    scale = ref.abs().max().item()
    assert (ours - ref).abs().max().item() <= 1e-4 * scale

    ref_logprobs = torch.log_softmax(ref[:-1], -1).gather(1, tensor[0, 1:, None]).squeeze(1)
    ref_ppl = math.exp(-ref_logprobs.mean().item())
    scored = default_engine.score(ids[:1], [ids[1:]])[0]
    assert abs(scored.perplexity() - ref_ppl) <= 1e-4 * ref_ppl
    # A real language model finds real English far likelier than shuffled tokens.
    shuffled = [ids[i] for i in torch.randperm(len(ids), generator=torch.Generator().manual_seed(0)).tolist()]
    assert default_engine.score(shuffled[:1], [shuffled[1:]])[0].perplexity() > 5 * scored.perplexity()
    assert ref_ppl < 60


def test_default_model_answers_a_question(default_engine):
    prompt = default_engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}])
    result = default_engine.generate(prompt, max_new_tokens=12)
    assert "Paris" in result.text
