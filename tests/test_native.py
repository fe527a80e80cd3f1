"""The native decode kernels (engine/int8_kernels.c and engine/decode_attention.c through
engine.native): int8 matmuls against the dequantised matmul in float64 within the stated rounding
of the activations, the same integer sums on every vector width, no overflow at the largest values,
NaN carried, a whole MoE layer equal to the expert-by-expert loop; decode attention against float64
attention, strided and grouped; kept whole under torch.compile; a clear fallback where they cannot
be built."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import our_logits

from engine import native
from engine.loader import load_model
from engine.model import Experts
from engine.quant import Int8Experts, int8_matmul, quantize_int8, quantize_rows

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(native.library() is None, reason=f"native kernels {native.status()}")


def activation_rounding_bound(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per output: half a step of x's int16 grid times the row's absolute weights, plus fp32 sums."""
    absolute = q.double().abs() * scale.double()[:, None]
    step = x.double().abs().max() / 32767
    return 0.5 * step * absolute.sum(-1) + 1e-6 * (x.double().abs() @ absolute.T).reshape(-1)


@pytest.mark.parametrize("k", [64, 100, 2304, 5000])  # whole vectors, a tail, past one 2048-element chunk
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_is_the_dequantised_matmul_within_the_activation_rounding(k, dtype) -> None:
    generator = torch.Generator().manual_seed(k)
    weight = torch.randn(300, k, generator=generator)
    x = (torch.randn(1, k, generator=generator) * torch.rand(1, k, generator=generator) * 4).to(dtype)
    q, scale = quantize_rows(weight)
    scale = scale.to(dtype)
    reference = (x.double() @ (q.double() * scale.double()[:, None]).T).reshape(-1)
    got = native.int8_gemv(x, q, scale)
    assert got.dtype == dtype and got.shape == (1, 300)
    output_rounding = reference.abs() * (2**-8 if dtype == torch.bfloat16 else 0)
    assert ((got.double().reshape(-1) - reference).abs() <= activation_rounding_bound(x, q, scale)
            + output_rounding).all()


def test_gemv_does_not_overflow_at_the_largest_values() -> None:
    k = 20000  # ten 2048-element chunks of the largest products
    q = torch.full((3, k), 127, dtype=torch.int8)
    q[1] = -127
    x = torch.full((1, k), 3.0)
    got = native.int8_gemv(x, q, torch.ones(3))
    expected = torch.tensor([127 * 3.0 * k, -127 * 3.0 * k, 127 * 3.0 * k])
    assert torch.allclose(got.reshape(-1), expected, rtol=1e-6)


def test_gemv_carries_nan_and_zero_rows() -> None:
    q, scale = quantize_rows(torch.randn(8, 64))
    x = torch.randn(1, 64)
    x[0, 5] = float("nan")
    assert native.int8_gemv(x, q, scale).isnan().all()
    assert (native.int8_gemv(torch.zeros(1, 64), q, scale) == 0).all()


def test_int8_matmul_takes_the_native_kernel_for_one_row_only() -> None:
    q, scale = quantize_rows(torch.randn(40, 64))
    x = torch.randn(3, 64)
    exact = x @ (q.float() * scale[:, None]).T
    assert torch.equal(int8_matmul(x[:1], q, scale), native.int8_gemv(x[:1], q, scale))
    assert torch.allclose(int8_matmul(x, q, scale), exact, atol=1e-4)  # three rows: torch's kernel, exact


def _experts(dtype: torch.dtype) -> tuple[Int8Experts, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    experts = Experts(type("Config", (), {"num_experts": 16, "moe_intermediate_size": 96, "hidden_size": 128})(),
                      decode_rows=1)
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.randn(16, 192, 128, generator=generator) * 0.1)
        experts.down_proj.copy_(torch.randn(16, 128, 96, generator=generator) * 0.1)
    int8 = Int8Experts(experts.to(dtype))
    x = torch.randn(1, 128, generator=generator).to(dtype)
    weights = torch.softmax(torch.randn(1, 4, generator=generator), -1).to(dtype)
    chosen = torch.randperm(16, generator=generator)[:4][None]
    return int8, x, weights, chosen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moe_layer_in_one_call_equals_the_expert_by_expert_loop(dtype) -> None:
    int8, x, weights, chosen = _experts(dtype)
    fused = int8.row_by_row(x, weights, chosen)
    with torch.no_grad():  # the same computation in float64 from the dequantised weights
        gate_up = int8.gate_up_q.double() * int8.gate_up_scale.double()[..., None]
        down = int8.down_q.double() * int8.down_scale.double()[..., None]
        reference = torch.zeros(128, dtype=torch.float64)
        for weight, index in zip(weights[0].double(), chosen[0].tolist(), strict=True):
            gate, up = (gate_up[index] @ x[0].double()).chunk(2)
            reference += weight * (down[index] @ (F.silu(gate) * up))
    loop = Experts.row_by_row(int8, x, weights, chosen)  # the parent: expert by expert, torch's kernels
    scale = reference.abs().max()
    assert (fused.double()[0] - reference).abs().max() <= (1e-4 if dtype == torch.float32 else 1e-2) * scale
    assert (fused.double() - loop.double()).abs().max() <= (1e-4 if dtype == torch.float32 else 2e-2) * scale


def test_tiny_mellum_int8_decode_stays_close(tiny_fused_dir) -> None:
    """Token by token (one row: every projection and MoE layer through the native kernels), against
    full precision, with the bounds of test_quant's prefill test."""
    model = load_model(tiny_fused_dir)
    quantized = quantize_int8(copy.deepcopy(model))
    ids = torch.randint(0, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    full, low = our_logits(model, ids), our_logits(quantized, ids, chunk=1)
    divergence = F.kl_div(low.log_softmax(-1), full.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    assert divergence.mean() <= 1e-3 and divergence.max() <= 1e-2
    assert (low.argmax(-1) == full.argmax(-1)).float().mean() >= 0.9


def reference_attention(q, keys, values, mask) -> torch.Tensor:
    heads, dim = q.shape[1], q.shape[3]
    group = heads // keys.shape[1]
    k, v = (t.double().repeat_interleave(group, dim=1) for t in (keys, values))
    scores = q.double() @ k.transpose(-1, -2) / dim**0.5 + mask.double()
    return torch.softmax(scores, -1) @ v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(32, 4, 128), (9, 3, 64), (4, 4, 20)])
def test_decode_attention_is_float64_attention(dtype, heads, kv_heads, dim) -> None:
    generator = torch.Generator().manual_seed(heads)
    # q as the model makes it (a transposed view); keys and values as views of a larger ring
    q = torch.randn(2, 1, heads, dim, generator=generator).to(dtype).transpose(1, 2)
    ring_k, ring_v = (torch.randn(2, kv_heads, 512, dim, generator=generator).to(dtype) for _ in range(2))
    keys, values = ring_k[:, :, :300], ring_v[:, :, :300]
    mask = torch.zeros(1, 300)
    mask[0, 250:] = float("-inf")  # padding
    mask[0, :7] = float("-inf")  # outside a window
    mask = mask.to(dtype)
    got = native.decode_attention(q, keys, values, mask)
    assert got.dtype == dtype and got.shape == (2, heads, 1, dim)
    reference = reference_attention(q, keys, values, mask)
    tolerance = 1e-5 if dtype == torch.float32 else 2**-8
    assert ((got.double() - reference).abs() <= tolerance * reference.abs().clamp(min=1)).all()


def test_decode_attention_reads_no_masked_position() -> None:
    q = torch.randn(1, 4, 1, 16)
    keys, values = torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16)
    mask = torch.zeros(1, 40)
    mask[0, 30:] = float("-inf")
    keys[:, :, 30:], values[:, :, 30:] = float("nan"), float("nan")  # a masked slot may hold anything
    got = native.decode_attention(q, keys, values, mask)
    assert torch.allclose(got, reference_attention(q, keys[:, :, :30], values[:, :, :30], mask[:, :30]).float(),
                          atol=1e-5)


def test_compiled_graph_keeps_the_kernels_as_operators() -> None:
    q, scale = quantize_rows(torch.randn(40, 64))
    int8, x, weights, chosen = _experts(torch.float32)
    graphs: list[str] = []

    def backend(graph: torch.fx.GraphModule, example_inputs: list):
        graphs.append(graph.code)
        return graph.forward

    keys, values, mask = torch.randn(1, 2, 10, 16), torch.randn(1, 2, 10, 16), torch.zeros(1, 10)

    def step(row: torch.Tensor) -> torch.Tensor:
        return int8_matmul(row, q, scale).sum() + native.int8_moe(
            x, weights, chosen, int8.gate_up_q, int8.gate_up_scale, int8.down_q, int8.down_scale).sum() + \
            native.decode_attention(row[:, :64].reshape(1, 4, 1, 16), keys, values, mask).sum()

    row = torch.randn(1, 64)
    compiled = torch.compile(step, backend=backend, fullgraph=True)  # fullgraph: a graph break would raise
    assert torch.allclose(compiled(row), step(row))
    assert all(f"focal.{name}" in graphs[0] for name in ("int8_gemv", "int8_moe", "decode_attention"))


SCRIPT = textwrap.dedent("""
    import json
    import torch
    from engine import native
    from engine.quant import quantize_rows
    generator = torch.Generator().manual_seed(3)
    q, scale = quantize_rows(torch.randn(50, 2500, generator=generator))
    x = torch.randn(1, 2500, generator=generator)
    print(native.status())
    if native.library() is not None:
        print(json.dumps(native.int8_gemv(x, q, scale).reshape(-1).tolist()))
""")


def _run(**env: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=120)
    return done.stdout.splitlines()


def test_every_vector_width_computes_the_same_sums(tmp_path) -> None:
    fresh = {"FOCAL_NATIVE_DIR": str(tmp_path)}  # the first run builds the library from the source
    runs = {isa: _run(FOCAL_NATIVE_ISA=isa, **fresh) for isa in ("avx512", "avx2", "plain")}
    assert [path.name for path in tmp_path.iterdir()] == [native.library_path().name]
    assert runs["plain"][0] == "loaded (plain C)" and runs["avx2"][0] == "loaded (AVX2)"
    values = {isa: torch.tensor(json.loads(lines[1])) for isa, lines in runs.items()}
    assert torch.allclose(values["avx2"], values["plain"], rtol=1e-6, atol=1e-6)
    assert torch.allclose(values["avx512"], values["plain"], rtol=1e-6, atol=1e-6)


def test_without_a_compiler_int8_falls_back_and_says_why(tmp_path) -> None:
    compiler = tmp_path / "no-such-cc"
    assert _run(CC=str(compiler), FOCAL_NATIVE_DIR=str(tmp_path / "cache")) == [
        f"unavailable (cannot run the C compiler {compiler}: No such file or directory)"]
    assert _run(FOCAL_NATIVE="0") == ["unavailable (turned off (FOCAL_NATIVE=0))"]
    assert _run(FOCAL_NATIVE_ISA="avx9")[0].startswith("unavailable (FOCAL_NATIVE_ISA='avx9'")
