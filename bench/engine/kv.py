"""KV-cache bytes against the formula (``ModelConfig.kv_cache_bytes``), and the long-context run."""

from __future__ import annotations

import time

import torch

from bench.engine.models import MELLUM_SLICE, mellum_state
from bench.report import markdown_table, progress, provenance, write
from engine.config import from_hf_dict
from engine.loader import build_model
from engine.model import CausalLM

LONG_EVERY = 6144  # three chunks of 2048


def kv_at(model: CausalLM, tokens: int, chunk: int = 2048, every: int = 0) -> dict[str, object]:
    """Prefill ``tokens`` in chunks into a cache that grows as it fills (no reservation) and compare
    the bytes it holds with the formula, at the end and (``every`` > 0) every ``every`` tokens on
    the way; ``worst_ratio`` is the largest ratio seen (the full layers grow by a quarter at a time,
    so they hold up to 1.25x just after growing). ``Engine`` reserves a prompt's length up front,
    which holds exactly the formula."""
    config = model.config
    cache = model.new_cache(1)
    ids = torch.randint(0, config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(3))
    dtype_bytes = model.model.embed_tokens.weight.element_size()

    def formula(n: int) -> int:
        return config.kv_cache_bytes(n, dtype_bytes)

    on_the_way = []
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, tokens, chunk):
            model(ids[:, start:start + chunk], cache)
            done = min(start + chunk, tokens)
            if every and done % every == 0:
                on_the_way.append({"tokens": done, "bytes": cache.nbytes(), "formula_bytes": formula(done),
                                   "ratio": cache.nbytes() / formula(done),
                                   "prefill_tok_s": done / (time.perf_counter() - started)})
            if start // chunk % 4 == 3:
                progress(f"kv: {done}/{tokens} tokens, {cache.nbytes() / 2**20:.0f} MiB")
    seconds = time.perf_counter() - started
    ratio = cache.nbytes() / formula(tokens)
    return {"tokens": tokens, "bytes": cache.nbytes(), "formula_bytes": formula(tokens), "ratio": ratio,
            "worst_ratio": max([ratio] + [p["ratio"] for p in on_the_way]), "prefill_tok_s": tokens / seconds,
            "on_the_way": on_the_way}


def long_context(tokens: int) -> None:
    """The slice in bf16 (ours only) prefilled to ``tokens`` (YaRN on the full layer): KV bytes
    against the formula every 6144 tokens (three chunks: mostly not powers of two, where growth
    shows), and the prefill rate; ``bench/results/engine_long``."""
    config = from_hf_dict(MELLUM_SLICE)
    if tokens > config.max_position_embeddings:
        raise SystemExit(f"--long {tokens} exceeds the slice's context of {config.max_position_embeddings}")
    model = build_model(config, mellum_state(), torch.bfloat16)
    figures = kv_at(model, tokens, every=LONG_EVERY)
    rows = [[f"{p['tokens']}", f"{p['bytes'] / 2**20:.1f}", f"{p['formula_bytes'] / 2**20:.1f}", f"{p['ratio']:.3f}",
             f"{p['prefill_tok_s']:.0f}"] for p in figures["on_the_way"]]
    lines = ["# Long context: the real-width Mellum2 slice (bf16, chunks of 2048), KV cache against the formula", "",
             "Formula: (full layers x n + sliding layers x window) x 2 x kv_heads x head_dim x 2 bytes. The cache",
             "grows here as it fills (no reservation), by a quarter at a time; Engine reserves a prompt exactly.",
             f"Worst ratio on the way: {figures['worst_ratio']:.3f}.",
             "", markdown_table(["tokens", "KV MiB held", "KV MiB formula", "ratio", "prefill tok/s so far"], rows)]
    write("engine_long", {"ratios": {"kv_bytes_over_formula": figures["ratio"],
                                     "kv_bytes_over_formula_worst": figures["worst_ratio"]},
                          "raw": figures, "provenance": provenance({"tokens": tokens})}, "\n".join(lines))
