"""Decoding loops: one token per forward, or speculative (a drafter's guesses verified together).

Speculative decoding emits the model's own next token, asks the drafter what follows it, and runs
that token and the draft through the model in one forward. Each drafted token is then checked
against the model's distribution at its position; the first one that fails ends the step, the KV
cache is rewound past it (``KVCache.rewind``, sliding rings included), and the model's
distribution at that position gives the next token.

- Greedy: a drafted token is kept when it is the model's argmax there, so the output is plain
  greedy decoding's whatever the drafter proposes.
- Sampling: the standard acceptance rule (Leviathan et al. 2023; Chen et al. 2023) for a drafter
  that proposes one token per position with certainty: the token ``d`` is kept with probability
  ``p(d)`` under the model's (temperature / top-k / top-p) distribution ``p``; on rejection the
  next token is drawn from ``p`` with ``d`` removed and renormalised. Every emitted token then
  follows ``p`` exactly, as if no drafter had been asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.cache import KVCache
from engine.drafting import Drafter
from engine.errors import Interrupted
from engine.tokenizer import ChatTokenizer

# Asked before every forward; True abandons the work (``Interrupted``).
StopCheck = Callable[[], bool]
# Runs token ids [1, T] at the cache's offset and returns hidden states [1, T, H].
Forward = Callable[[torch.Tensor, KVCache], torch.Tensor]
# Projects hidden states [..., H] on the vocabulary.
Logits = Callable[[torch.Tensor], torch.Tensor]


def checkpoint(stop: StopCheck | None) -> None:
    if stop is not None and stop():
        raise Interrupted("the caller stopped the work (cancelled, or past its deadline)")


@dataclass
class Speculation:
    """How a speculative decode went: verifying forwards, drafted tokens, and those the model kept."""

    steps: int = 0
    proposed: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def mean_accepted(self) -> float:
        """Drafted tokens kept per verifying forward (each forward also yields one token of its own)."""
        return self.accepted / self.steps if self.steps else 0.0


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (a stop string), "eos", "length" or "time" (the time limit)
    prompt_tokens: int
    speculation: Speculation | None = None


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """The probabilities sampling draws from: temperature, then top-k, then top-p (nucleus)."""
        logits = logits / self.temperature
        if self.top_k > 0:
            kth = torch.topk(logits, min(self.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, sorted_ids = torch.sort(probs, descending=True)
            outside = sorted_probs.cumsum(0) - sorted_probs > self.top_p
            sorted_probs[outside] = 0
            probs = torch.zeros_like(probs).scatter_(0, sorted_ids, sorted_probs)
        return probs / probs.sum()

    def pick(self, logits: torch.Tensor, generator: torch.Generator, exclude: int | None = None) -> int:
        """The next token; ``exclude`` (a rejected draft) is removed from the distribution first.
        Greedy needs no removal: a draft is rejected only when it is not the argmax."""
        if self.greedy:
            return int(logits.argmax())
        probs = self.distribution(logits)
        if exclude is not None:
            probs[exclude] = 0
        return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))

    def accepts(self, logits: torch.Tensor, drafted: int, generator: torch.Generator) -> bool:
        if self.greedy:
            return int(logits.argmax()) == drafted
        chance = float(self.distribution(logits)[drafted])
        return float(torch.rand((), generator=generator, device=logits.device)) < chance


class Output:
    """The tokens emitted so far, and whether decoding is over: EOS, a stop string, the token limit
    or the time limit (``seconds`` from now; None = none)."""

    def __init__(self, tokenizer: ChatTokenizer, eos: set[int], stop: tuple[str, ...] | list[str],
                 prompt_tokens: int, limit: int, seconds: float | None = None) -> None:
        self.tokenizer, self.eos, self.stop = tokenizer, eos, [s for s in stop if s]
        self.prompt_tokens, self.limit = prompt_tokens, limit
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.tokens: list[int] = []
        self.result: Generation | None = None

    @property
    def remaining(self) -> int:
        return self.limit - len(self.tokens)

    def add(self, token: int) -> bool:
        """Emit ``token``; True when decoding ends with it (``result`` is then set)."""
        if token in self.eos:
            return self._end("eos", self.tokenizer.decode(self.tokens))
        self.tokens.append(token)
        if self.stop:
            text = self.tokenizer.decode(self.tokens)
            hits = [text.find(s) for s in self.stop if s in text]
            if hits:
                return self._end("stop", text[: min(hits)])
        if not self.remaining:
            return self._end("length", self.tokenizer.decode(self.tokens))
        return False

    def out_of_time(self) -> bool:
        """True (and decoding ends) once the time limit has passed; asked before every forward."""
        if self.deadline is None or time.monotonic() < self.deadline:
            return False
        return self._end("time", self.tokenizer.decode(self.tokens))

    def _end(self, reason: str, text: str) -> bool:
        self.result = Generation(text, list(self.tokens), reason, self.prompt_tokens)
        return True


def decode_plain(forward: Forward, logits_of: Logits, cache: KVCache, hidden: torch.Tensor, sampling: Sampling,
                 generator: torch.Generator, output: Output, stop: StopCheck | None) -> Generation:
    """One forward per token. ``hidden`` [1, H] is the prompt's last position."""
    logits = logits_of(hidden)[0].float()
    while not output.add(sampling.pick(logits, generator)) and not output.out_of_time():
        checkpoint(stop)
        token = torch.tensor([[output.tokens[-1]]], device=cache.device)
        logits = logits_of(forward(token, cache)[:, -1])[0].float()
    return output.result


def decode_speculative(forward: Forward, logits_of: Logits, cache: KVCache, hidden: torch.Tensor,
                       sampling: Sampling, generator: torch.Generator, output: Output, stop: StopCheck | None,
                       drafter: Drafter, prompt: list[int], draft_tokens: int) -> Generation:
    """Speculative decoding (see the module's docstring); ``draft_tokens`` bounds a draft, and must
    leave room for the model's own token within any sliding window."""
    stats = Speculation()
    drafter.start(prompt)
    logits = logits_of(hidden)[0].float()
    rejected: int | None = None
    while True:
        token = sampling.pick(logits, generator, rejected)
        if output.add(token) or output.out_of_time():
            break
        drafter.extend([token])
        draft = drafter.propose(min(draft_tokens, output.remaining))
        checkpoint(stop)
        mark = cache.mark(1 + len(draft))
        hidden = forward(torch.tensor([[token, *draft]], device=cache.device), cache)[0]
        rows = logits_of(hidden).float()
        stats.steps += 1
        stats.proposed += len(draft)
        kept, rejected, ended = 0, None, False
        for drafted, row in zip(draft, rows):
            if not sampling.accepts(row, drafted, generator):
                rejected = drafted
                break
            kept += 1
            if output.add(drafted):
                ended = True
                break
        stats.accepted += kept
        if ended:
            break
        drafter.extend(draft[:kept])
        cache.rewind(mark, 1 + kept)
        logits = rows[kept]
    output.result.speculation = stats
    return output.result
