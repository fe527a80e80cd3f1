"""Speculative decoding's worth: decode speed with and without a drafter on digest-shaped prompts.

The prompts are what the digest method sends (``compressor.compression.digest.digest_prompt``):
the instruction, numbered evidence and the question, in the model's chat template. The evidence
of each is the question's gold chunk and the two chunks after it in the shared dev sets
(questions 51 onwards, the reported half). Both sides decode greedily from the same prompts,
alternating inside every repeat, best repeat per side; the benchmark refuses to report a speedup
when the two outputs differ in a single token (they must be identical by construction).
"""

from __future__ import annotations

import time

import torch

from bench.report import progress
from compressor.compression.digest import digest_prompt
from devtools.data import CODE_DEV, NQ_DEV, chunk_text, read_rows
from engine import Engine, PromptLookup

FIRST_REPORTED = 50  # dev questions 51 onwards


def digest_prompts(engine: Engine, per_set: int, budget: int) -> list[str]:
    prompts = []
    for path in (NQ_DEV, CODE_DEV):
        for row in read_rows(path)[FIRST_REPORTED : FIRST_REPORTED + per_set]:
            chunks = row["chunks"]
            gold = next((i for i, c in enumerate(chunks) if c.get("is_gold")), 0)
            evidence = [chunk_text(chunks[(gold + k) % len(chunks)]) for k in range(3)]
            prompts.append(digest_prompt(engine, row["question"], evidence, budget))
    return prompts


def _decode_all(engine: Engine, prompts: list[str], new_tokens: int, drafted: bool) -> tuple[float, list, list]:
    outputs, stats = [], []
    started = time.perf_counter()
    for prompt in prompts:
        generation = engine.generate(prompt, max_new_tokens=new_tokens, drafter=PromptLookup() if drafted else None)
        outputs.append(generation.token_ids)
        stats.append(generation.speculation)
    return time.perf_counter() - started, outputs, stats


def speculative_figures(engine: Engine, per_set: int = 6, new_tokens: int = 128, repeats: int = 2) -> dict:
    """{prompt_lookup: {speedup, acceptance, mean_accepted, tok_s, plain_tok_s, ...}} for ``engine``."""
    prompts = digest_prompts(engine, per_set, budget=new_tokens)
    engine.prefix_cache.clear()
    with torch.inference_mode():
        best = {False: float("inf"), True: float("inf")}
        outputs: dict[bool, list] = {}
        for repeat in range(repeats):
            for drafted in (False, True) if repeat % 2 == 0 else (True, False):
                # Prompts prefilled in the other side's pass must not make this one cheaper.
                engine.prefix_cache.clear()
                seconds, outputs[drafted], stats = _decode_all(engine, prompts, new_tokens, drafted)
                best[drafted] = min(best[drafted], seconds)
                if drafted:
                    speculation = stats
            progress(f"speculative: repeat {repeat + 1}/{repeats}: plain {best[False]:.1f}s, "
                     f"prompt lookup {best[True]:.1f}s")
    if outputs[True] != outputs[False]:
        raise AssertionError("speculative greedy decoding differs from plain greedy decoding: no speedup is reported")
    tokens = sum(len(o) for o in outputs[False])
    steps = sum(s.steps for s in speculation)
    proposed, accepted = sum(s.proposed for s in speculation), sum(s.accepted for s in speculation)
    return {"prompt_lookup": {
        "prompts": len(prompts), "new_tokens": new_tokens, "generated_tokens": tokens,
        "plain_tok_s": tokens / best[False], "tok_s": tokens / best[True], "speedup": best[False] / best[True],
        "acceptance": accepted / proposed if proposed else 0.0, "mean_accepted": accepted / steps if steps else 0.0,
        "verify_steps": steps, "identical_output": True}}
