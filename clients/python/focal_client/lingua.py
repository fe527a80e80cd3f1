"""LLMLingua's call shape, for users migrating from it: ``compress_prompt(context=[...],
question=..., rate=... | target_token=..., instruction=...)`` returning LLMLingua's keys.

=============================  =====================================================
LLMLingua ``compress_prompt``  here
=============================  =====================================================
``context`` (list of str)      the chunks, ids "0", "1", ... in order
``question``                   the query (ranking is question-aware whenever given)
``instruction``                the instruction, put first and never compressed
``rate`` (default 0.5)         the fraction of the context's tokens kept
``target_token`` (> 0)         an absolute budget in tokens; wins over ``rate``
``force_tokens``               words always kept
``reorder_context``            "original" or "sort" (most relevant first)
``concate_question``           end the prompt with the question (default True)
LLMLingua's own tuning knobs   accepted and ignored (``IGNORED``): Focal ranks and
                               selects by its own tuned settings
=============================  =====================================================

Returned: ``compressed_prompt``, ``origin_tokens`` and ``compressed_tokens`` (the whole prompt,
instruction and question included, as LLMLingua counts them, in the server's tokens), ``ratio``
("3.2x"), ``rate`` ("31.2%") and ``saving`` (what the dropped tokens would have cost at
``price_per_1k_tokens`` dollars per thousand; LLMLingua's own estimate uses GPT-4's 0.06).
"""

from __future__ import annotations

from collections.abc import Iterable

from focal_client.rpc.focal.compressor.v1 import compressor_pb2 as pb

REORDERS = {"original": "original", "sort": "relevance"}
# LLMLingua parameters that steer its own algorithm; Focal has its own, tuned on held-out questions.
IGNORED = frozenset({
    "iterative_size", "force_context_ids", "force_context_number", "use_sentence_level_filter",
    "use_context_level_filter", "use_token_level_filter", "keep_split", "keep_first_sentence",
    "keep_last_sentence", "keep_sentence_number", "high_priority_bonus", "context_budget", "token_budget_ratio",
    "condition_in_question", "dynamic_context_compression_ratio", "condition_compare", "add_instruction",
    "rank_method", "context_segs", "context_segs_rate", "context_segs_compress", "target_context",
    "context_level_rate", "context_level_target_token", "token_to_word", "force_reserve_digit",
    "drop_consecutive", "chunk_end_tokens"})


def request_arguments(context: Iterable[str] | str, question: str, instruction: str, rate: float,
                      target_token: float, force_tokens: Iterable[str], reorder_context: str,
                      concate_question: bool, ignored: dict[str, object]) -> dict:
    """``compress`` arguments for an LLMLingua-shaped call."""
    unknown = sorted(set(ignored) - IGNORED)
    if unknown:
        raise TypeError(f"compress_prompt() got unexpected keyword arguments {unknown}")
    if reorder_context not in REORDERS:
        raise ValueError(f"unknown reorder_context {reorder_context!r}; choose one of {sorted(REORDERS)}")
    texts = [context] if isinstance(context, str) else list(context)
    budget = {"target_tokens": int(target_token)} if target_token and target_token > 0 else {"rate": rate}
    return {"query": question, "chunks": [(str(i), text) for i, text in enumerate(texts)],
            "instruction": instruction, "force_tokens": list(force_tokens), "reorder": REORDERS[reorder_context],
            "include_question": concate_question, **budget}


def lingua_result(reply: pb.CompressResponse, price_per_1k_tokens: float) -> dict[str, object]:
    usage = reply.usage
    compressed = usage.prompt_tokens
    origin = usage.prompt_tokens - usage.compressed_tokens + usage.original_tokens
    saving = (origin - compressed) * price_per_1k_tokens / 1000
    ratio = origin / compressed if compressed else 1.0
    return {"compressed_prompt": reply.prompt, "origin_tokens": origin, "compressed_tokens": compressed,
            "ratio": f"{ratio:.1f}x", "rate": f"{compressed / max(origin, 1) * 100:.1f}%",
            "saving": f", Saving ${saving:.1f} at ${price_per_1k_tokens}/1K tokens."}
