"""Who is measured: a side (ours or a peer) in one precision, compiled or not, and the measuring loop.

Sides alternate inside every repeat and the best repeat counts, so machine noise hits all alike.
Prefill computes logits for the last position only; decode is the median step after a 512-token
prompt.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bench.report import best_of, progress
from engine.compiled import CompiledForward
from engine.model import CausalLM


@dataclass(frozen=True)
class Variant:
    """One measured configuration: ``side`` (ours, transformers, llama.cpp), its ``precision``,
    whether it runs under torch.compile, and the peer it was measured ``beside`` when that is not
    transformers (our variants are measured again in llama.cpp's phase)."""

    side: str
    precision: str
    compiled: bool = False
    beside: str = ""

    @property
    def short(self) -> str:
        return self.precision + ("+compile" if self.compiled else "")

    @property
    def label(self) -> str:
        name = f"{self.side} {self.short}"
        return f"{name} (with {self.beside})" if self.beside else name

    def measured_beside(self, peer: str) -> Variant:
        return replace(self, beside=peer)

    @classmethod
    def parse(cls, label: str) -> Variant:
        """The variant a ``label`` names (``"ours bf16+compile (with llama.cpp)"``), as results files store it."""
        name, _, beside = label.partition(" (with ")
        side, _, short = name.rpartition(" ")
        precision, _, compiled = short.partition("+")
        return cls(side, precision, compiled == "compile", beside.removesuffix(")"))


class Ours:
    """Our engine's model: chunked prefill into a reserved cache, one-token decode steps."""

    def __init__(self, model: CausalLM, chunk: int = 2048, compiled: bool = False) -> None:
        self.model, self.chunk = model, chunk
        self.forward = CompiledForward(model) if compiled else model
        if compiled:  # compile the prefill and decode graphs before anything is timed
            progress("compiling (prefill and decode graphs)")
            for length in (64, 96):  # a second length makes dynamo compile the shape-generic graph
                _, cache = self.prefill(torch.arange(length)[None] % model.config.vocab_size)
                self.step(torch.tensor([[1]]), cache)
            if self.forward.stats.failures:  # a compiled row must time compiled code
                raise RuntimeError(f"compiling our model failed ({self.forward.stats.failures[0]}): "
                                   "its compiled rows would time eager code")

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor):
        cache = self.model.new_cache(1)
        cache.reserve(ids.shape[1] + 64)
        hidden = None
        for start in range(0, ids.shape[1], self.chunk):
            hidden = self.forward(ids[:, start : start + self.chunk], cache)
        return self.model.logits(hidden[:, -1:]), cache

    @torch.inference_mode()
    def step(self, token: torch.Tensor, cache) -> torch.Tensor:
        return self.model.logits(self.forward(token, cache))


class Theirs:
    """transformers' model with its ``DynamicCache``; ``compiled`` runs it under ``torch.compile`` as
    ours is, compiled before anything is timed."""

    def __init__(self, model, compiled: bool = False) -> None:
        self.model = torch.compile(model, dynamic=True) if compiled else model
        if compiled:
            progress("compiling transformers' model (prefill and decode graphs)")
            vocab = model.config.vocab_size
            for length in (64, 96):
                _, cache = self.prefill(torch.arange(length)[None] % vocab)
                self.step(torch.tensor([[1]]), cache)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits, out.past_key_values

    @torch.inference_mode()
    def step(self, token: torch.Tensor, cache) -> torch.Tensor:
        return self.model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1).logits


def _decode_ms(side, prompt: torch.Tensor, token: torch.Tensor, steps: int) -> float:
    """Median milliseconds of one decode step after ``prompt`` (prefill excluded)."""
    _, cache = side.prefill(prompt)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        side.step(token, cache)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(sides: dict[Variant, object], vocab: int, lengths: tuple[int, ...], repeats: int,
            steps: int) -> dict[Variant, dict[str, float]]:
    """Figures per side; the sides alternate inside every repeat so that machine noise hits both."""
    generator = torch.Generator().manual_seed(0)
    figures: dict[Variant, dict[str, float]] = {name: {} for name in sides}
    for length in lengths:
        ids = torch.randint(0, vocab, (1, length), generator=generator)
        best = {name: float("inf") for name in sides}
        for _ in range(repeats):
            for name, side in sides.items():
                best[name] = min(best[name], best_of(1, lambda side=side, ids=ids: side.prefill(ids)))
        for name in sides:
            figures[name][f"prefill_{length}_tok_s"] = length / best[name]
        progress(f"prefill {length}: " + ", ".join(f"{n.label} {figures[n][f'prefill_{length}_tok_s']:.1f} tok/s"
                                                     for n in sides))
    prompt = torch.randint(0, vocab, (1, 512), generator=generator)
    token = torch.randint(0, vocab, (1, 1), generator=generator)
    best = {name: float("inf") for name in sides}
    for _ in range(repeats):
        for name, side in sides.items():
            best[name] = min(best[name], _decode_ms(side, prompt, token, steps))
    for name in sides:
        figures[name]["decode_ms_per_token"] = best[name]
    progress("decode: " + ", ".join(f"{n.label} {best[n]:.1f} ms/token" for n in sides))
    return figures


class LlamaCpp:
    """llama.cpp through llama-cpp-python on a GGUF file: prompt processing and one-token steps."""

    def __init__(self, path: Path, threads: int, context: int) -> None:
        from llama_cpp import Llama

        self.model = Llama(model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                           n_batch=512, n_ubatch=512, verbose=False)

    def prefill(self, ids: torch.Tensor):
        self.model.reset()
        self.model.eval(ids[0].tolist())
        return None, None

    def step(self, token: torch.Tensor, _cache) -> None:
        self.model.eval(token[0].tolist())


def fastest(figures: dict[Variant, dict[str, float]], side: str, key: str, higher: bool = True) -> Variant:
    """The variant of ``side`` that is fastest on ``key``."""
    variants = [v for v in figures if v.side == side and key in figures[v]]
    return (max if higher else min)(variants, key=lambda v: figures[v][key])
