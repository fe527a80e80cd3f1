"""The engine on one accelerator: the real Mellum2 configuration (28 layers, random weights, bf16).

Run by ``bench/gpu.sh`` on a machine with a CUDA GPU (after the engine's device tests):

- prefill tokens/s at 4K and 32K tokens, with model FLOP utilisation (active FLOPs per token x
  tokens/s over the device's bf16 matmul rate, measured in the same run);
- decode ms/token after a 4K prompt;
- scoring as the compressor uses it: 64 rows of 32 tokens after a shared 1024-token prefix, rows/s;
- a compress call's p50 (sentence method, rate 1/4) on the code dev questions' 20 chunks each
  (about 4-5K tokens), the embedder on the CPU as the service runs it;
- the batching gain at concurrency 8: eight of those requests one after the other, against the
  same eight in one ``compress_many`` batch (what the service's scheduler does).

The layer pattern is the slice's, repeated: three sliding-window layers, then one full (YaRN)
layer; every MLP sparse (64 experts, top 8). ``--reduced`` runs a narrow model of the same kinds
with short inputs on any device: the tests run it on the CPU, so this script cannot rot.

    python -m bench.gpu [--device cuda] [--reduced] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.engine.limits import active_flops_per_token
from bench.engine.prefix import default_tokenizer
from bench.engine.variants import Ours
from bench.report import RESULTS, markdown_table, progress, provenance, write
from compressor.compression.pipeline import Compressor
from compressor.compression.request import Chunk, CompressRequest
from devtools.data import CODE_DEV, chunk_text, read_rows
from devtools.mellum import FULL, SLIDING, TINY_MELLUM, mellum_slice, random_state
from engine import Engine, EngineOptions
from engine.config import from_hf_dict
from engine.loader import build_model
from engine.model import CausalLM

FULL_SIZE = {"layers": 28, "prefill": (4096, 32768), "decode_prompt": 4096, "decode_steps": 32,
             "score": (1024, 64, 32), "questions": 8, "chunks": 20, "repeats": 2}
REDUCED = {"layers": 4, "prefill": (256, 1024), "decode_prompt": 256, "decode_steps": 4,
           "score": (64, 8, 16), "questions": 2, "chunks": 4, "repeats": 1}


def model_config(reduced: bool) -> dict:
    """The real widths (or, reduced, the tiny model's widths with a vocabulary the default tokenizer fits)."""
    size = REDUCED if reduced else FULL_SIZE
    layer_types = [SLIDING, SLIDING, SLIDING, FULL] * (size["layers"] // 4)
    if reduced:
        return {**TINY_MELLUM, "vocab_size": 49152, "layer_types": layer_types,
                "mlp_layer_types": ["sparse"] * len(layer_types), "num_hidden_layers": len(layer_types)}
    return mellum_slice(layer_types)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(device: torch.device, run, repeats: int = 1) -> float:
    """The best of ``repeats`` runs, the device's queue drained before and after each."""
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        run()
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int) -> float:
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / seconds(device, lambda: torch.mm(a, b), 5) / 1e12


def engine_figures(model: CausalLM, device: torch.device, size: dict, peak_tflops: float) -> dict:
    ours, config, figures = Ours(model), model.config, {}
    generator = torch.Generator().manual_seed(0)
    for length in size["prefill"]:
        ids = torch.randint(0, config.vocab_size, (1, length), generator=generator).to(device)
        ours.prefill(ids[:, :256])  # warm up the kernels
        took = seconds(device, lambda ids=ids: ours.prefill(ids), size["repeats"])
        figures[f"prefill_{length}_tok_s"] = length / took
        figures[f"prefill_{length}_mfu"] = active_flops_per_token(config, length) * length / took / (peak_tflops * 1e12)
        progress(f"prefill {length}: {length / took:.0f} tok/s")
    prompt = torch.randint(0, config.vocab_size, (1, size["decode_prompt"]), generator=generator).to(device)
    _, cache = ours.prefill(prompt)
    token = torch.tensor([[1]], device=device)
    steps = [seconds(device, lambda: ours.step(token, cache)) for _ in range(size["decode_steps"])]
    figures["decode_ms_per_token"] = statistics.median(steps) * 1000
    progress(f"decode: {figures['decode_ms_per_token']:.2f} ms/token")
    return figures


def scoring_figures(engine: Engine, device: torch.device, size: dict) -> dict:
    prefix_tokens, rows, row_tokens = size["score"]
    generator = torch.Generator().manual_seed(1)
    vocab = engine.model.config.vocab_size
    prefix = torch.randint(0, vocab, (prefix_tokens,), generator=generator).tolist()
    batch = [torch.randint(0, vocab, (row_tokens,), generator=generator).tolist() for _ in range(rows)]
    engine.score(prefix, batch[:2])  # warm up
    took = seconds(device, lambda: engine.score(prefix, batch), size["repeats"])
    progress(f"scoring: {rows / took:.0f} rows/s")
    return {"score_rows_per_s": rows / took, "score_prefix_tokens": prefix_tokens, "score_rows": rows,
            "score_row_tokens": row_tokens}


def compress_figures(engine: Engine, device: torch.device, size: dict) -> dict:
    compressor = Compressor(engine)
    requests = [CompressRequest(row["question"], [Chunk(str(i), chunk_text(c))
                                                  for i, c in enumerate(row["chunks"][:size["chunks"]])], rate=0.25)
                for row in read_rows(CODE_DEV)[50:50 + size["questions"]]]
    compressor.compress(requests[0])  # warm up
    one_by_one = [seconds(device, lambda request=request: compressor.compress(request)) for request in requests]
    batched = seconds(device, lambda: compressor.compress_many(requests))
    tokens = statistics.mean(sum(compressor.count(c.text) for c in request.chunks) for request in requests)
    progress(f"compress: p50 {statistics.median(one_by_one) * 1000:.0f} ms; batching gain "
             f"{sum(one_by_one) / batched:.2f}x")
    return {"compress_p50_ms": statistics.median(one_by_one) * 1000, "compress_chunk_tokens": tokens,
            "batch_of": len(requests), "one_by_one_s": sum(one_by_one), "batched_s": batched,
            "batching_gain": sum(one_by_one) / batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--reduced", action="store_true", help="a narrow model and short inputs (the tests' mode)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write gpu.json here (default: bench/results, and the report beside it)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = REDUCED if args.reduced else FULL_SIZE
    hf_config = model_config(args.reduced)
    progress(f"{size['layers']}-layer Mellum2 ({'reduced' if args.reduced else 'real widths'}), random weights, "
             f"{dtype} on {device}")
    model = build_model(from_hf_dict(hf_config), random_state(hf_config, device=device, dtype=dtype), dtype, device)
    engine = Engine(model, default_tokenizer(), EngineOptions(prefix_cache_bytes=0))
    peak = matmul_tflops(device, dtype, 1024 if args.reduced else 8192)
    figures = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "dtype": str(dtype).removeprefix("torch."), "layers": size["layers"], "matmul_tflops": peak,
               **engine_figures(model, device, size, peak), **scoring_figures(engine, device, size),
               **compress_figures(engine, device, size),
               "provenance": provenance({"device": args.device, "reduced": args.reduced})}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu.json").write_text(json.dumps(figures, indent=2))
        print(json.dumps(figures))
        return
    rows = [[key, f"{value:.3g}"] for key, value in figures.items() if isinstance(value, float)]
    write("gpu", figures, "\n".join([
        f"# The engine on {figures['device']} ({figures['dtype']}, {size['layers']} layers, random weights)", "",
        "See bench/gpu.py for what each figure measures. Target: batching gain at concurrency 8 >= 3x.", "",
        markdown_table(["figure", "value"], rows)]))
    progress(f"written to {RESULTS / 'gpu.md'}")


if __name__ == "__main__":
    main()
