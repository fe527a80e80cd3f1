"""The same decoder runs Mellum2's dense relatives: Llama, Qwen3 and Qwen3-MoE layouts, and bf16."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_logits_close, our_logits

from devtools.mellum import TINY_MELLUM, write_checkpoint
from engine.loader import load_model

COMMON = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512,
          "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
RELATIVES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"rope_theta": 10000.0}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"rope_theta": 1000000.0}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  {"rope_theta": 1000000.0, "num_experts": 6, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                   "decoder_sparse_step": 1, "mlp_only_layers": [1], "norm_topk_prob": True}),
}


@pytest.mark.parametrize("model_type", sorted(RELATIVES))
def test_relative_matches_transformers(tmp_path, model_type):
    import transformers

    config_name, model_name, extra = RELATIVES[model_type]
    config = getattr(transformers, config_name)(**COMMON, **extra)
    torch.manual_seed(0)
    hf = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            param.copy_(1 + 0.1 * torch.randn_like(param) if "norm" in name else 0.3 * torch.randn_like(param))
    directory = write_checkpoint(tmp_path / model_type, config.to_dict(),
                                 {k: v.clone() for k, v in hf.state_dict().items()})
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = hf(input_ids=ids).logits
    assert_logits_close(our_logits(load_model(directory), ids, chunk=5), reference)


def test_bf16_load_stays_close_to_fp32(tiny_fused_dir):
    ids = torch.randint(0, TINY_MELLUM["vocab_size"], (1, 30), generator=torch.Generator().manual_seed(2))
    fp32 = our_logits(load_model(tiny_fused_dir), ids)
    bf16_model = load_model(tiny_fused_dir, dtype=torch.bfloat16)
    assert bf16_model.model.embed_tokens.weight.dtype == torch.bfloat16
    bf16 = our_logits(bf16_model, ids).float()
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()
    assert (bf16.argmax(-1) == fp32.argmax(-1)).float().mean() > 0.9
