"""GGUF: our dequantisation against the gguf package's, and write -> read round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_logits_close, our_logits
from gguf import GGMLQuantizationType as Q
from gguf import quants

from devtools.gguf_write import write_gguf
from devtools.mellum import TINY_MELLUM
from engine import default_model_path
from engine.config import from_hf_dict
from engine.errors import WeightsError
from engine.gguf_read import GGUFFile, config_from_gguf, dequantize, read_tensors
from engine.loader import build_model, load_model
from engine.weights import checkpoint_state


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_dequantize_matches_gguf_reference(qtype):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(6, 64)).astype(np.float32)
    if qtype == Q.F32:
        raw = values
    elif qtype == Q.F16:
        raw = values.astype(np.float16)
    else:
        raw = quants.quantize(values, qtype)
    reference = values if qtype == Q.F32 else quants.dequantize(raw, qtype).astype(np.float32)
    ours = dequantize(raw, qtype, (6, 64)).numpy()
    np.testing.assert_array_equal(ours, reference.reshape(6, 64))
    if qtype not in (Q.F32,):
        assert np.abs(ours - values).max() > 0  # a real quantisation happened


def test_dequantize_rejects_wrong_size():
    with pytest.raises(WeightsError, match="needs"):
        dequantize(np.zeros((2, 34), dtype=np.uint8), Q.Q8_0, (3, 32))


def _through_gguf_quants(state: dict[str, torch.Tensor], qtype: Q) -> dict[str, torch.Tensor]:
    """What the file should decode to: every matrix but the router quantised by the gguf package."""
    out = {}
    for name, value in state.items():
        if value.dim() == 1 or name.endswith("mlp.gate.weight") or qtype == Q.F32:
            out[name] = value
            continue
        array = value.detach().numpy()
        decoded = quants.dequantize(quants.quantize(array, qtype), qtype).astype(np.float32)
        out[name] = torch.from_numpy(decoded.reshape(array.shape))
    return out


@pytest.mark.parametrize("qtype", [Q.F32, Q.BF16, Q.Q8_0, Q.Q4_1])
def test_mellum_gguf_round_trip(tmp_path, tiny_hf, qtype):
    config = from_hf_dict(TINY_MELLUM)
    state = dict(tiny_hf.state_dict())
    path = tmp_path / "tiny-mellum.gguf"
    write_gguf(path, config, state, qtype=qtype)
    gguf = GGUFFile(path)
    assert gguf.arch == "mellum"
    read_config = config_from_gguf(gguf)
    assert read_config.layer_types == config.layer_types
    assert read_config.mlp_layer_types == config.mlp_layer_types
    read_full, full = read_config.rope["full_attention"], config.rope["full_attention"]
    assert read_full.attention_factor == pytest.approx(full.attention_factor, rel=1e-6)  # stored as f32
    # In llama.cpp's convention: relative to YaRN's own scale, which TINY_MELLUM's factor equals.
    assert gguf.arch_key("rope.scaling.attn_factor") == pytest.approx(1.0, rel=1e-6)
    assert read_full.factor == full.factor
    assert read_full.original_max_position_embeddings == full.original_max_position_embeddings
    assert read_config.rope["sliding_attention"] == config.rope["sliding_attention"]
    assert read_config.sliding_window == config.sliding_window
    ids = torch.randint(0, config.vocab_size, (1, 30), generator=torch.Generator().manual_seed(5))
    from_gguf = our_logits(load_model(path), ids)
    expected = our_logits(build_model(config, _through_gguf_quants(state, qtype), torch.float32), ids)
    assert_logits_close(from_gguf, expected)
    if qtype != Q.F32:
        exact = our_logits(build_model(config, state, torch.float32), ids)
        assert (from_gguf - exact).abs().max() > 0  # the file really is quantised


def test_llama_gguf_round_trip_undoes_rope_permutation(tmp_path, default_engine):
    """Writing the default model (llama architecture, permuted q/k) and reading it back is exact."""
    model = load_model(None, torch.float32)  # plain weights (the engine's own are reordered for oneDNN)
    path = tmp_path / "smollm.gguf"
    state = checkpoint_state(model)
    write_gguf(path, model.config, state, qtype=Q.F32, tokenizer=default_engine.tokenizer)
    gguf = GGUFFile(path)
    tensors = read_tensors(gguf, config_from_gguf(gguf))
    for name, value in tensors.items():
        torch.testing.assert_close(value, state[name], rtol=0, atol=0, msg=name)
    reloaded = build_model(config_from_gguf(gguf), tensors, torch.float32)
    ids = torch.tensor([default_engine.encode("Round trips keep every weight.")])
    torch.testing.assert_close(our_logits(reloaded, ids), our_logits(model, ids), rtol=0, atol=0)


def test_truncated_gguf_is_reported(tmp_path, tiny_hf):
    path = tmp_path / "cut.gguf"
    write_gguf(path, from_hf_dict(TINY_MELLUM), dict(tiny_hf.state_dict()))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"cut\.gguf"):
        load_model(path)


def _tiny_gguf_with(path, tiny_hf, tokenizer, **overrides):
    write_gguf(path, from_hf_dict(TINY_MELLUM), dict(tiny_hf.state_dict()), tokenizer=tokenizer, overrides=overrides)
    return GGUFFile(path)


def test_an_unknown_pre_tokenizer_is_an_error_naming_the_key(tmp_path, tiny_hf, default_engine):
    from engine.errors import TokenizerError
    from engine.tokenizer import from_gguf

    known = from_gguf(GGUFFile(default_model_path()))  # "smollm": digits split, then GPT-2's split
    assert known.encode("Paris 2024") == default_engine.tokenizer.encode("Paris 2024")
    unknown = _tiny_gguf_with(tmp_path / "unknown.gguf", tiny_hf, default_engine.tokenizer,
                              **{"tokenizer.ggml.pre": "llama-bpe"})
    with pytest.raises(TokenizerError, match=r"tokenizer\.ggml\.pre 'llama-bpe' is not a pre-tokenizer"):
        from_gguf(unknown)


def test_a_sliding_pattern_that_is_not_a_list_is_an_error_naming_the_key(tmp_path, tiny_hf):
    from engine.errors import ConfigError

    gguf = _tiny_gguf_with(tmp_path / "pattern.gguf", tiny_hf, None,
                           **{"mellum.attention.sliding_window_pattern": 4})
    with pytest.raises(ConfigError, match=r"mellum\.attention\.sliding_window_pattern must be a list of 4 booleans"):
        config_from_gguf(gguf)
