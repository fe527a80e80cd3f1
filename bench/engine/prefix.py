"""The prefix cache's worth: scoring after a shared prefix, recomputed against cached."""

from __future__ import annotations

import torch

from bench.report import best_of, progress
from engine import Engine, EngineOptions, default_model_path
from engine.model import CausalLM


def default_tokenizer():
    from engine.gguf_read import GGUFFile
    from engine.tokenizer import from_gguf

    return from_gguf(GGUFFile(default_model_path()))


def prefix_reuse(model: CausalLM, prefix_tokens: int = 1024, rows: int = 8, row_tokens: int = 96,
                 repeats: int = 3) -> dict[str, float]:
    """``Engine.score`` of ``rows`` continuations after a shared prefix (a long instruction), without
    the prefix cache and with it warm: the time a repeated instruction costs per request."""
    tokenizer = default_tokenizer()
    generator = torch.Generator().manual_seed(5)
    vocab = model.config.vocab_size
    prefix = torch.randint(0, vocab, (prefix_tokens,), generator=generator).tolist()
    continuations = [torch.randint(0, vocab, (row_tokens,), generator=generator).tolist() for _ in range(rows)]
    cold = Engine(model, tokenizer, EngineOptions(prefix_cache_bytes=0))
    warm = Engine(model, tokenizer)
    warm.score(prefix, continuations, entropy=False)
    cold_s = best_of(repeats, lambda: cold.score(prefix, continuations, entropy=False))
    warm_s = best_of(repeats, lambda: warm.score(prefix, continuations, entropy=False))
    figures = {"prefix_tokens": prefix_tokens, "rows": rows, "row_tokens": row_tokens, "cold_ms": cold_s * 1000,
               "warm_ms": warm_s * 1000, "speedup": cold_s / warm_s,
               "reused_tokens_per_call": warm.prefix_cache.stats.reused_tokens / warm.prefix_cache.stats.hits}
    progress(f"prefix reuse: cold {figures['cold_ms']:.0f} ms, warm {figures['warm_ms']:.0f} ms "
             f"({figures['speedup']:.2f}x)")
    return figures
