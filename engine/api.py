"""The engine's public API: what the compressor (and anything else) calls.

``Engine.score(prefix, continuations)`` gives, for every continuation token, its log-probability
and the entropy of the model's distribution at that position, conditioned on the shared prefix
and the continuation tokens before it. The prefix is run once; its KV cache is copied to every row
of a batch; continuations run together, right-padded, in fixed-size chunks (causal attention means
padding never leaks into real positions).

``Engine.generate(prompt, ...)`` decodes greedily (``temperature=0``) or by sampling (temperature,
top-k, top-p, seed), up to ``max_new_tokens``, stopping at EOS or at the first stop string.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.cache import KVCache
from engine.compiled import CompiledForward, CompileStats
from engine.config import SLIDING, ModelConfig
from engine.decoding import (
    Generation,
    Output,
    Sampling,
    StopCheck,
    checkpoint,
    decode_plain,
    decode_speculative,
)
from engine.drafting import Drafter
from engine.loader import load
from engine.model import CausalLM
from engine.packed import pack_weights, packing_available
from engine.prefix_cache import PrefixCache
from engine.quant import quantize_int8
from engine.tokenizer import ChatTokenizer


@dataclass
class TokenScores:
    """Per-token scores of one continuation (fp32 tensors of the continuation's length)."""

    token_ids: list[int]
    logprobs: torch.Tensor
    entropies: torch.Tensor

    def perplexity(self) -> float:
        return math.exp(-self.logprobs.mean().item()) if self.token_ids else float("nan")


@dataclass
class _Prefix:
    """A scored prefix shared by every row of a ``score`` call."""

    cache: KVCache
    first: torch.Tensor  # log-probabilities of the first continuation token [V]
    first_entropy: torch.Tensor


@dataclass(frozen=True)
class EngineOptions:
    """How an engine batches and caches; none of these change a result, only time and memory."""

    prefill_chunk: int = 2048  # positions one forward covers (bounds activation memory for long inputs)
    max_batch_tokens: int = 4096  # rows x padded length of one scoring batch
    logits_rows: int = 128  # hidden rows projected on the vocabulary at a time
    max_padding: float = 0.1  # fraction of a scoring batch that may be padding (length bucketing)
    prefix_cache_bytes: int = 256 << 20  # budget of the cross-call prefix KV cache (0 = off)
    prefix_block: int = 16  # tokens per prefix-cache block (``engine.prefix_cache``)
    compile_model: bool = False  # run the forward through torch.compile (``engine.compiled``)


class Engine:
    """A loaded model with its tokenizer; batched scoring and generation on top of the KV cache."""

    def __init__(self, model: CausalLM, tokenizer: ChatTokenizer, options: EngineOptions | None = None) -> None:
        self.options = options = options or EngineOptions()
        self.model = model
        self.forward = CompiledForward(model) if options.compile_model else model
        self.tokenizer = tokenizer
        self.prefix_cache = PrefixCache(options.prefix_cache_bytes, options.prefix_block)

    @classmethod
    def load(cls, path: str | Path | None = None, dtype: torch.dtype = torch.float32,
             device: torch.device | str = "cpu", quantize: str = "", options: EngineOptions | None = None) -> Engine:
        """Load a GGUF file or HF directory; ``None`` is the embedded default model.
        ``quantize="int8"`` stores every projection as int8 rows (``engine.quant``); otherwise bf16
        and fp32 on a CPU get their weights reordered once (``engine.packed``: oneDNN's layout, or the
        engine's bf16 tiles on CPUs with AVX-512 BF16), unless the forward is compiled (inductor
        cannot lower the reordered weights and would fall back to eager)."""
        if quantize not in ("", "int8"):
            raise ValueError(f"unknown quantization {quantize!r}; use '' or 'int8'")
        model, tokenizer = load(path, dtype, device)
        if quantize == "int8":
            quantize_int8(model)
        elif packing_available(device, dtype) and not (options and options.compile_model):
            pack_weights(model)
        return cls(model, tokenizer, options)

    @property
    def compile_stats(self) -> CompileStats | None:
        """What compiled so far, when the forward runs through ``torch.compile``; else ``None``."""
        return self.forward.stats if isinstance(self.forward, CompiledForward) else None

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def context_length(self) -> int:
        return self.config.max_position_embeddings

    def warm_up(self) -> float:
        """Run the kinds of forward a service makes (a prefix, a padded batch on top of it, decode
        steps) once, so a compiled forward compiles them before traffic arrives; returns seconds."""
        started = time.perf_counter()
        vocab = self.config.vocab_size
        prefix = [(7 * i + 3) % vocab for i in range(40)]
        self.score(prefix, [prefix[:n] for n in (5, 17, 29)], entropy=False)
        self.generate(prefix, max_new_tokens=3)
        return time.perf_counter() - started

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def _check_length(self, length: int) -> None:
        if length > self.context_length:
            raise ValueError(f"{length} tokens exceed the model's context of {self.context_length}")

    def prefill(self, ids: torch.Tensor, cache: KVCache, stop: StopCheck | None = None) -> torch.Tensor:
        """Run ``ids`` [B, T] through the model in chunks; return the final hidden states [B, T, H].
        ``stop`` is asked before every chunk."""
        parts = []
        for start in range(0, ids.shape[1], self.options.prefill_chunk):
            checkpoint(stop)
            parts.append(self.forward(ids[:, start : start + self.options.prefill_chunk], cache))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def prefill_prefix(self, ids: list[int], reserve: int = 0) -> tuple[KVCache, torch.Tensor]:
        """A single-row cache holding ``ids`` and the last position's hidden state [1, H]. The longest
        cached block-aligned prefix is reused, and the state at the last block boundary is stored for
        later calls; only the tokens past the reused part are computed. Full layers are sized once for
        ``max(reserve, len(ids))`` positions (no regrowth copies, no slack)."""
        device = self.model.model.embed_tokens.weight.device
        found = self.prefix_cache.lookup(ids)
        cache, hidden, start = found if found else (self.model.new_cache(1), None, 0)
        cache.reserve(max(reserve, len(ids)))
        aligned = self.prefix_cache.aligned(len(ids))
        if self.prefix_cache.enabled and aligned > start:
            hidden = self.prefill(torch.tensor([ids[start:aligned]], device=device), cache)[:, -1]
            self.prefix_cache.store(ids[:aligned], cache, hidden)
            start = aligned
        if start < len(ids):
            hidden = self.prefill(torch.tensor([ids[start:]], device=device), cache)[:, -1]
        return cache, hidden

    def _row_scores(self, hidden: torch.Tensor, targets: torch.Tensor | None,
                    entropy: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Log-probability of ``targets`` and entropy for hidden rows, via logsumexp (no full softmax)."""
        logits = self.model.logits(hidden).float()
        normalizer = torch.logsumexp(logits, dim=-1)
        logprobs = None if targets is None else logits.gather(1, targets[:, None]).squeeze(1) - normalizer
        entropies = None
        if entropy:
            entropies = normalizer - (torch.softmax(logits, dim=-1) * logits).sum(-1)
        return logprobs, entropies

    def _gather(self, hidden: torch.Tensor, targets: torch.Tensor, entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of hidden [N, H] against ``targets`` [N], ``logits_rows`` rows at a time (bounded memory)."""
        logprobs, entropies = [], []
        for start in range(0, hidden.shape[0], self.options.logits_rows):
            lp, ent = self._row_scores(hidden[start : start + self.options.logits_rows],
                                       targets[start : start + self.options.logits_rows], entropy)
            logprobs.append(lp)
            entropies.append(ent if ent is not None else torch.full_like(lp, float("nan")))
        return torch.cat(logprobs), torch.cat(entropies)

    def _prefix_ids(self, prefix: list[int]) -> list[int]:
        if prefix:
            return prefix
        if self.config.bos_token_id is None:
            raise ValueError("an empty prefix needs a BOS token, and this model has none")
        return [self.config.bos_token_id]

    @torch.inference_mode()
    def score(self, prefix: list[int], continuations: list[list[int]], entropy: bool = True,
              tail: int | None = None, stop: StopCheck | None = None) -> list[TokenScores]:
        """Log-probability (and, if ``entropy``, the entropy of the model's distribution) of each
        continuation token given ``prefix`` (BOS if empty) and the tokens before it.

        ``tail`` scores only the last ``tail`` tokens of every continuation (the others still
        condition them, but get NaN): the vocabulary projection is skipped where nobody needs it.
        ``stop`` is asked before every batch and prefill chunk: when it turns true the call raises
        ``Interrupted``, so a cancelled or expired request frees the engine within one chunk.
        """
        prefix = self._prefix_ids(prefix)
        self._check_length(len(prefix) + max((len(c) for c in continuations), default=0))
        checkpoint(stop)
        prefix_cache, prefix_hidden = self.prefill_prefix(prefix)
        logits = self.model.logits(prefix_hidden).float()[0]
        first = logits - torch.logsumexp(logits, dim=-1)
        first_entropy = -(first.exp() * first).sum() if entropy else torch.tensor(float("nan"))
        shared = _Prefix(prefix_cache, first, first_entropy)
        results: list[TokenScores | None] = [None] * len(continuations)
        for batch in self._length_buckets(continuations):
            checkpoint(stop)
            self._score_batch(shared, [continuations[i] for i in batch], batch, results, entropy, tail, stop)
        return [r for r in results if r is not None]

    def _length_buckets(self, continuations: list[list[int]]) -> list[list[int]]:
        """Indices grouped into right-padded batches: sorted by length, a new batch whenever padding
        would exceed ``max_padding`` of the batch or its tokens would exceed ``max_batch_tokens``."""
        order = sorted(range(len(continuations)), key=lambda i: len(continuations[i]))
        limit, padding = self.options.max_batch_tokens, self.options.max_padding
        batches: list[list[int]] = []
        batch: list[int] = []
        real = 0
        for index in order:
            length = len(continuations[index])
            padded = (len(batch) + 1) * length
            if batch and (padded > limit or padded - real - length > padding * padded):
                batches.append(batch)
                batch, real = [], 0
            batch.append(index)
            real += length
        if batch:
            batches.append(batch)
        return batches

    def _score_batch(self, prefix: _Prefix, seqs: list[list[int]], indices: list[int], results: list,
                     entropy: bool, tail: int | None, stop: StopCheck | None) -> None:
        device = prefix.cache.device
        first, first_entropy = prefix.first, prefix.first_entropy
        if not seqs:
            return
        longest = max(len(s) for s in seqs)
        for i, seq in zip(indices, seqs):
            if not seq:
                results[i] = TokenScores([], torch.empty(0), torch.empty(0))
        live = [(i, s) for i, s in zip(indices, seqs) if s]
        if not live:
            return
        if longest == 1:
            hidden = None
        else:
            padded = torch.zeros((len(live), longest - 1), dtype=torch.long, device=device)
            for row, (_, seq) in enumerate(live):
                padded[row, : len(seq) - 1] = torch.tensor(seq[:-1], device=device)
            cache = prefix.cache.repeat(len(live))
            hidden = self.prefill(padded, cache, stop)
        rows, targets, starts = [], [], []
        for row, (_, seq) in enumerate(live):
            start = 1 if tail is None else max(1, len(seq) - tail)
            if start < len(seq):
                rows.append(hidden[row, start - 1 : len(seq) - 1])
                targets.append(torch.tensor(seq[start:], device=device))
            starts.append(start)
        if rows:
            logprobs, entropies = self._gather(torch.cat(rows), torch.cat(targets), entropy)
        offset = 0
        for (i, seq), start in zip(live, starts):
            lp = torch.full((len(seq),), float("nan"))
            ent = torch.full((len(seq),), float("nan"))
            if tail is None or tail >= len(seq):
                lp[0], ent[0] = first[seq[0]], first_entropy
            count = len(seq) - start
            lp[start:] = logprobs[offset : offset + count].cpu() if count else lp[start:]
            ent[start:] = entropies[offset : offset + count].cpu() if count else ent[start:]
            results[i] = TokenScores(list(seq), lp, ent)
            offset += count

    @torch.inference_mode()
    def generate(self, prompt: str | list[int], max_new_tokens: int = 128, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, stop: tuple[str, ...] | list[str] = (),
                 seed: int | None = None, drafter: Drafter | None = None, draft_tokens: int = 8,
                 interrupt: StopCheck | None = None, time_limit: float | None = None) -> Generation:
        """Decode a continuation of ``prompt`` (text or token ids). With a ``drafter`` the decode is
        speculative (``engine.decoding``): the same output for greedy decoding, the same
        distribution for sampling, fewer forwards when the drafts are good; ``draft_tokens`` bounds
        one draft. ``interrupt`` is asked before every forward: when it turns true the call raises
        ``Interrupted`` (a request's deadline or cancellation). ``time_limit`` (seconds) ends the
        decode with what it has, finish reason ``"time"``."""
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            ids = self._prefix_ids([])
        self._check_length(len(ids) + max_new_tokens)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        device = self.model.model.embed_tokens.weight.device
        generator = torch.Generator(device=device)
        if seed is not None:
            generator.manual_seed(seed)
        checkpoint(interrupt)
        cache, hidden = self.prefill_prefix(ids, reserve=len(ids) + max_new_tokens)
        sampling = Sampling(temperature, top_k, top_p)
        output = Output(self.tokenizer, set(self.config.eos_token_ids), stop, len(ids), max_new_tokens,
                        time_limit)
        if drafter is None:
            return decode_plain(self.forward, self.model.logits, cache, hidden, sampling, generator, output,
                                interrupt)
        return decode_speculative(self.forward, self.model.logits, cache, hidden, sampling, generator, output,
                                  interrupt, drafter, ids, min(draft_tokens, self.longest_draft))

    @property
    def longest_draft(self) -> int:
        """The most drafted tokens one verifying forward may carry: with the model's own token they
        must fit in the sliding window (a ring cannot rewind more than it holds)."""
        if SLIDING in self.config.layer_types:
            return self.config.sliding_window - 1
        return self.context_length
