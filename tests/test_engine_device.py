"""The engine on the test device (``FOCAL_TEST_DEVICE``, default cpu; ``bench/gpu.sh`` sets cuda):
a tiny Mellum2 built there matches transformers' reference (fp32, CPU) across the sliding window in
fp32, and within bf16's precision in bf16; greedy generation with and without speculation agrees.
On the CPU these repeat the parity tests cheaply; on a GPU they are what proves the CUDA path. And
the GPU benchmark's reduced mode runs here, so the script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_logits_close, our_logits

from devtools.mellum import TINY_MELLUM, hf_mellum
from engine import Engine, EngineOptions
from engine.config import from_hf_dict
from engine.drafting import PromptLookup
from engine.loader import build_model

DEVICE = torch.device(os.environ.get("FOCAL_TEST_DEVICE", "cpu"))
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                                reason="FOCAL_TEST_DEVICE asks for CUDA, and no GPU is visible")


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, TINY_MELLUM["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(5))


def on_device(tiny_hf, dtype: torch.dtype):
    state = {name: tensor.detach().clone() for name, tensor in tiny_hf.state_dict().items()}
    return build_model(from_hf_dict(TINY_MELLUM), state, dtype, DEVICE)


def test_fp32_on_the_device_matches_transformers(tiny_hf, ids):
    with torch.no_grad():
        reference = tiny_hf(input_ids=ids).logits
    model = on_device(tiny_hf, torch.float32)
    assert_logits_close(our_logits(model, ids.to(DEVICE), chunk=13).cpu(), reference)


def test_bf16_on_the_device_errs_no_more_than_transformers_bf16(tiny_hf, ids):
    """bf16 moves the logits (and flips a few routing choices of the tiny MoE): measured against the
    fp32 reference, ours in bf16 on the device must stray no further than transformers' own bf16."""
    with torch.no_grad():
        reference = tiny_hf(input_ids=ids).logits
        theirs = hf_mellum(TINY_MELLUM, dtype=torch.bfloat16)(input_ids=ids).logits.float()
    ours = our_logits(on_device(tiny_hf, torch.bfloat16), ids.to(DEVICE)).float().cpu()

    def stray(logits: torch.Tensor) -> tuple[float, float]:
        same_top1 = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
        return (logits - reference).abs().mean().item(), same_top1

    (ours_error, ours_top1), (their_error, their_top1) = stray(ours), stray(theirs)
    assert ours_error <= 1.5 * their_error and ours_top1 >= their_top1 - 0.05, (ours_error, their_error)


def test_speculative_greedy_equals_plain_greedy_on_the_device(tiny_hf, default_engine):
    engine = Engine(on_device(tiny_hf, torch.float32), default_engine.tokenizer, EngineOptions(prefix_cache_bytes=0))
    prompt = torch.randint(1, 160, (30,), generator=torch.Generator().manual_seed(6)).tolist()
    plain = engine.generate(prompt, 24).token_ids
    assert engine.generate(prompt, 24, drafter=PromptLookup(), draft_tokens=4).token_ids == plain


def test_the_gpu_benchmark_runs_reduced(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--reduced", "--device", str(DEVICE), "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads((tmp_path / "gpu.json").read_text())
    for key in ("prefill_256_tok_s", "prefill_1024_tok_s", "prefill_1024_mfu", "decode_ms_per_token",
                "score_rows_per_s", "compress_p50_ms", "batching_gain"):
        assert figures[key] > 0, key
    assert figures["layers"] == 4 and figures["provenance"]["settings"]["reduced"] is True
