"""Before llama.cpp is timed: does it compute the same model from the GGUF file?

A wrong or missing key in a file our writer produced (the sliding-window pattern, the window, YaRN's
factors) would make llama.cpp run a different, perhaps cheaper model, and every ratio against it
meaningless. So the same token ids go through both sides, past the sliding window where sliding
and full layers part ways, and the top-1 token at every position is compared (and the logits, as
the largest difference over the largest logit). The benchmark times llama.cpp only on a model
whose check passed.

The slice's F32 file is compared with our fp32 model on the same weights: the same arithmetic up to
summation order, so nearly every position must agree. The default model's own Q4_1 file is
compared with our fp32 model read from it (the same weights, dequantized): llama.cpp multiplies
quantized activations too, so a few near-ties may flip. The input is real text in both cases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.engine.prefix import default_tokenizer
from bench.report import progress
from devtools.data import NQ_DEV, chunk_text, read_rows
from engine.config import SLIDING
from engine.model import CausalLM

REQUIRED_TOP1 = {"F32": 0.98, "Q4_1": 0.90}  # share of positions whose top-1 token must agree, by file type


@torch.inference_mode()
def our_logits(model: CausalLM, ids: list[int], chunk: int = 512) -> np.ndarray:
    """Our logits at every position [len(ids), vocab] (float32), prefilled in chunks."""
    cache = model.new_cache(1)
    cache.reserve(len(ids))
    tensor = torch.tensor([ids])
    rows = []
    for start in range(0, len(ids), chunk):
        hidden = model(tensor[:, start:start + chunk], cache)
        rows.append(model.logits(hidden)[0].float().numpy())
    return np.concatenate(rows)


def llamacpp_logits(path: Path, ids: list[int], threads: int) -> np.ndarray:
    from llama_cpp import Llama

    llama = Llama(model_path=str(path), n_ctx=len(ids) + 16, n_threads=threads, n_threads_batch=threads,
                  n_batch=512, n_ubatch=512, logits_all=True, verbose=False)
    llama.eval(ids)
    logits = np.array(llama.scores[:len(ids)], dtype=np.float32)
    llama.close()
    return logits


def passage_ids(length: int) -> list[int]:
    """``length`` tokens of real text (NQ dev passages, questions 51 on, in the default tokenizer, which
    both models read): random ids make flat, near-tied distributions where top-1 says little."""
    tokenizer = default_tokenizer()
    ids: list[int] = []
    for row in read_rows(NQ_DEV)[50:]:
        ids += tokenizer.encode(" ".join(chunk_text(chunk) for chunk in row["chunks"]))
        if len(ids) >= length:
            return ids[:length]
    raise ValueError(f"the dev passages hold fewer than {length} tokens")


def agreement(path: Path, kind: str, model: CausalLM, threads: int, past_window: int = 256) -> dict:
    """Compare llama.cpp on ``path`` (a ``kind`` file: F32 or Q4_1) with ``model`` over passage text
    reaching ``past_window`` positions past the model's sliding window (or 512 positions when it has
    none); ``agrees`` says whether the benchmark may time it."""
    config = model.config
    window = config.sliding_window if SLIDING in config.layer_types else 0
    length = window + past_window if window else 512
    ids = passage_ids(length)
    progress(f"agreement: {path.name} against ours over {length} positions")
    ours, theirs = our_logits(model, ids), llamacpp_logits(path, ids, threads)
    same = ours.argmax(-1) == theirs.argmax(-1)
    past = same[window:] if window else same
    result = {"file": kind, "positions": length, "window": window,
              "top1_agreement": float(same.mean()), "top1_agreement_past_window": float(past.mean()),
              "max_abs_logit_diff": float(np.abs(ours - theirs).max()), "max_abs_logit": float(np.abs(ours).max()),
              "required_top1": REQUIRED_TOP1[kind]}
    result["agrees"] = min(result["top1_agreement"], result["top1_agreement_past_window"]) >= REQUIRED_TOP1[kind]
    progress(f"agreement: {result}")
    return result
