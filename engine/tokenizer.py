"""Tokenizer from ``tokenizer.json`` or from GGUF metadata, with the model's chat template."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from engine.errors import TokenizerError
from engine.gguf_read import GGUFFile

# llama.cpp pre-tokenizer names whose regex splits every digit on its own before the GPT-2 split.
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"}
# llama.cpp pre-tokenizer names that are GPT-2's own split.
_GPT2_PRE = {"default", "gpt2", "gpt-2"}
_CONTROL, _USER_DEFINED = 3, 4


class ChatTokenizer:
    """Encode/decode text and render chat messages with the model's own template."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str | None, bos_token: str | None,
                 eos_token: str | None, add_bos: bool) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.add_bos = add_bos

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and, for each, the (start, end) characters of ``text`` it covers."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render ``messages`` ([{"role", "content"}]) into the prompt string the model was tuned on."""
        if not self.chat_template:
            raise TokenizerError("this model has no chat template")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)

        def raise_exception(message: str) -> None:
            raise TokenizerError(f"chat template: {message}")

        env.globals["raise_exception"] = raise_exception
        template = env.from_string(self.chat_template)
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=self.bos_token or "", eos_token=self.eos_token or "")


def _token_content(entry: object) -> str | None:
    if isinstance(entry, dict):
        return entry.get("content")
    return entry if isinstance(entry, str) else None


def from_directory(directory: Path) -> ChatTokenizer:
    """A Hugging Face checkpoint's ``tokenizer.json`` (+ ``tokenizer_config.json`` if present)."""
    path = directory / "tokenizer.json"
    if not path.exists():
        raise TokenizerError(f"no tokenizer.json in {directory}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exception subclasses
        raise TokenizerError(f"cannot read {path}: {exc}") from exc
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    template = config.get("chat_template")
    template_file = directory / "chat_template.jinja"
    if template is None and template_file.exists():
        template = template_file.read_text()
    return ChatTokenizer(tokenizer, template, _token_content(config.get("bos_token")),
                         _token_content(config.get("eos_token")), bool(config.get("add_bos_token", False)))


def from_gguf(gguf: GGUFFile) -> ChatTokenizer:
    """Rebuild the byte-level BPE tokenizer a GGUF file describes (``tokenizer.ggml.model == gpt2``)."""
    kind = gguf.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise TokenizerError(f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')")
    pre = gguf.get("tokenizer.ggml.pre")
    if pre is not None and pre not in _GPT2_PRE | _DIGIT_SPLIT_PRE:
        raise TokenizerError(
            f"GGUF file {gguf.path.name}: tokenizer.ggml.pre {pre!r} is not a pre-tokenizer this engine knows "
            f"(known: {', '.join(sorted(_GPT2_PRE | _DIGIT_SPLIT_PRE))}); splitting its text the GPT-2 way would "
            "give other tokens than the model was trained on")
    tokens: list[str] = gguf.get("tokenizer.ggml.tokens", required=True)
    merges: list[str] = gguf.get("tokenizer.ggml.merges", required=True)
    types: list[int] = gguf.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {token: index for index, token in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRE:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == _CONTROL]
    user = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == _USER_DEFINED]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(user)

    def name(key: str) -> str | None:
        index = gguf.get(key)
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    return ChatTokenizer(tokenizer, gguf.get("tokenizer.chat_template"), name("tokenizer.ggml.bos_token_id"),
                         name("tokenizer.ggml.eos_token_id"), bool(gguf.get("tokenizer.ggml.add_bos_token", False)))
