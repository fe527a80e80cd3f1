"""Bad checkpoints and configs fail at load with a message naming what is wrong."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from devtools.mellum import TINY_MELLUM, write_checkpoint
from engine import ConfigError, EngineError, WeightsError, from_hf_dict
from engine.loader import load_model


def test_truncated_safetensors(tmp_path, tiny_fused_dir):
    target = tmp_path / "model"
    shutil.copytree(tiny_fused_dir, target)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(WeightsError, match=r"model\.safetensors"):
        load_model(target)


@pytest.mark.parametrize("field", ["hidden_size", "num_attention_heads", "vocab_size", "model_type"])
def test_missing_config_field(field):
    config = {k: v for k, v in TINY_MELLUM.items() if k != field}
    with pytest.raises(ConfigError, match=field):
        from_hf_dict(config)


def test_unknown_architecture(tmp_path):
    with pytest.raises(ConfigError, match="'gpt_neox'"):
        from_hf_dict({**TINY_MELLUM, "model_type": "gpt_neox"})


@pytest.mark.parametrize("change,field", [
    ({"layer_types": ["sliding_attention"] * 3}, "layer_types"),
    ({"mlp_layer_types": ["dense", "sparse", "moe", "sparse"]}, "mlp_layer_types"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"num_experts_per_tok": 9}, "num_experts_per_tok"),
    ({"sliding_window": None}, "sliding_window"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_parameters": {"full_attention": {"rope_type": "longrope", "rope_theta": 1.0},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 1.0}}}, "rope_type"),
])
def test_inconsistent_config(change, field):
    with pytest.raises(ConfigError, match=field):
        from_hf_dict({**TINY_MELLUM, **change})


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path, tiny_hf):
    state = {k: v.clone() for k, v in tiny_hf.state_dict().items()}
    del state["model.layers.2.self_attn.k_norm.weight"]
    state["model.layers.0.mlp.surprise.weight"] = torch.zeros(3)
    state["model.layers.1.mlp.gate.weight"] = torch.zeros(7, 64)
    with pytest.raises(WeightsError) as caught:
        load_model(write_checkpoint(tmp_path / "bad", TINY_MELLUM, state))
    message = str(caught.value)
    assert "model.layers.2.self_attn.k_norm.weight" in message
    assert "model.layers.0.mlp.surprise.weight" in message
    assert "model.layers.1.mlp.gate.weight (7, 64)" in message


def test_a_multi_token_prediction_head_is_skipped_with_a_warning(tmp_path, tiny_hf, caplog):
    state = {k: v.clone() for k, v in tiny_hf.state_dict().items()}
    state["mtp.layers.0.eh_proj.weight"] = torch.zeros(4, 8)
    with caplog.at_level(logging.WARNING, logger="focal.engine"):
        model = load_model(write_checkpoint(tmp_path / "with-mtp", TINY_MELLUM, state))
    assert "multi-token-prediction head is not used" in caplog.text
    assert not any(name.startswith("mtp") for name in model.state_dict())


def test_missing_expert_is_named(tmp_path, tiny_per_expert_dir):
    target = tmp_path / "model"
    shutil.copytree(tiny_per_expert_dir, target)
    index = json.loads((target / "model.safetensors.index.json").read_text())
    from safetensors.torch import load_file, save_file
    for shard in set(index["weight_map"].values()):
        tensors = load_file(str(target / shard))
        tensors.pop("model.layers.2.mlp.experts.5.up_proj.weight", None)
        save_file(tensors, str(target / shard))
    index["weight_map"].pop("model.layers.2.mlp.experts.5.up_proj.weight")
    (target / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match=r"layer 2 is missing expert tensors .*5.*up_proj"):
        load_model(target)


def test_missing_path_and_config(tmp_path):
    with pytest.raises(EngineError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"config\.json"):
        load_model(tmp_path)
