"""Shared fixtures: tiny random Mellum2 checkpoints on disk, the default model, a seeded torch
(the random models themselves come from ``devtools.mellum``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from devtools.mellum import TINY_MELLUM, hf_mellum, per_expert_layout, write_checkpoint

torch.set_num_threads(2)


def our_logits(model, ids: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    cache = model.new_cache(ids.shape[0])
    step = chunk or ids.shape[1]
    with torch.no_grad():
        parts = [model.logits(model(ids[:, s : s + step], cache)) for s in range(0, ids.shape[1], step)]
    return torch.cat(parts, dim=1)


def assert_logits_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    scale = ref.abs().max().item()
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-4 * scale, f"max abs diff {diff:.3g} exceeds 1e-4 x {scale:.3g}"


@pytest.fixture(scope="session")
def tiny_hf():
    return hf_mellum(TINY_MELLUM)


@pytest.fixture(scope="session")
def tiny_fused_dir(tmp_path_factory, tiny_hf) -> Path:
    state = {k: v.detach().clone() for k, v in tiny_hf.state_dict().items()}
    return write_checkpoint(tmp_path_factory.mktemp("fused"), TINY_MELLUM, state)


@pytest.fixture(scope="session")
def tiny_per_expert_dir(tmp_path_factory, tiny_hf) -> Path:
    state = per_expert_layout(tiny_hf.state_dict())
    return write_checkpoint(tmp_path_factory.mktemp("per_expert"), TINY_MELLUM, state, shards=3)


@pytest.fixture(scope="session")
def default_engine():
    from engine import Engine

    return Engine.load()


@pytest.fixture(scope="session")
def engine():
    """The default model as the service runs it: the preferred dtype of this CPU (bf16 here)."""
    from engine import Engine
    from engine.device import preferred_dtype

    return Engine.load(dtype=preferred_dtype())
