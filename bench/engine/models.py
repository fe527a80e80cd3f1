"""The measured models, each side in every variant it offers here: a real-width Mellum2 slice
(random weights shared tensor-for-tensor with transformers) and the default model (read by each
side from the same GGUF file)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.engine.variants import Ours, Theirs, Variant
from bench.report import progress
from devtools.mellum import hf_mellum, mellum_slice, random_state
from engine import default_model_path
from engine.config import from_hf_dict
from engine.loader import build_model, load_model
from engine.packed import pack_weights
from engine.quant import quantize_int8

MELLUM_SLICE = mellum_slice()
OURS_FP32, OURS_BF16 = Variant("ours", "fp32"), Variant("ours", "bf16")


def mellum_state() -> dict[str, torch.Tensor]:
    progress("building the real-width Mellum2 slice (random weights, ~8.5 GB fp32)")
    return random_state(MELLUM_SLICE)


def theirs_mellum(state: dict[str, torch.Tensor], dtype: torch.dtype):
    return hf_mellum(MELLUM_SLICE, dtype=dtype, state=state)


def mellum_groups(state: dict[str, torch.Tensor]) -> list[Callable[[], dict[Variant, object]]]:
    """The slice's sides in two groups, built and measured one after the other (fp32; then bf16 and
    int8, eager and compiled), each side alternating with its like-for-like peer: all at once would
    need ~28 GB. Our int8 and bf16 are built one by one so that at most one transient bf16 copy
    exists; int8 eager and compiled share one model."""
    config = from_hf_dict(MELLUM_SLICE)

    def fp32() -> dict[Variant, object]:
        return {OURS_FP32: Ours(pack_weights(build_model(config, state, torch.float32))),
                Variant("transformers", "fp32"): Theirs(theirs_mellum(state, torch.float32))}

    def bf16() -> dict[Variant, object]:
        int8 = quantize_int8(build_model(config, state, torch.bfloat16))
        return {OURS_BF16: Ours(pack_weights(build_model(config, state, torch.bfloat16))),
                Variant("ours", "int8"): Ours(int8),
                Variant("ours", "int8", compiled=True): Ours(int8, compiled=True),  # the same weights
                Variant("transformers", "bf16"): Theirs(theirs_mellum(state, torch.bfloat16))}

    return [fp32, bf16]


def ours_fp32_taking(state: dict[str, torch.Tensor]) -> Ours:
    """Our packed fp32 slice, built from ``state``, which it empties: packing then frees each plain
    tensor as its reordered copy is made, so the two never exist whole at once."""
    model = build_model(from_hf_dict(MELLUM_SLICE), state, torch.float32)
    state.clear()
    return Ours(pack_weights(model))


def default_sides() -> dict[Variant, object]:
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    progress(f"loading the default model from {path.name} on both sides")
    sides: dict[Variant, object] = {}
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        model = load_model(path, dtype)
        sides[Variant("ours", label)] = Ours(pack_weights(model))
    sides[Variant("ours", "int8")] = Ours(quantize_int8(load_model(path, torch.bfloat16)))
    sides[Variant("ours", "bf16", compiled=True)] = Ours(load_model(path, torch.bfloat16), compiled=True)
    sides[Variant("ours", "int8", compiled=True)] = Ours(quantize_int8(load_model(path, torch.bfloat16)),
                                                         compiled=True)
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        sides[Variant("transformers", label)] = Theirs(AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype).eval())
    sides[Variant("transformers", "bf16", compiled=True)] = Theirs(AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.bfloat16).eval(), compiled=True)
    return sides
