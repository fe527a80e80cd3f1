"""Token counters for budgets in another model's tokens: a ``tokenizer.json`` file (the Hugging Face
``tokenizers`` format most model releases ship), counted without special tokens, padding or
truncation, as the text of a prompt's context is counted by the model that reads it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from tokenizers import Tokenizer


def token_counter(path: str | Path) -> Callable[[str], int]:
    """Tokens of a text under the tokenizer in ``path``; a file that is not one is a ValueError naming it."""
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises its own exception type for any bad file
        raise ValueError(f"{path} is not a tokenizer.json file ({exc})") from None
    # Padding and truncation in a tokenizer.json are batching settings (an embedder's pads every text
    # to 128 tokens): a count must see the text's own tokens.
    tokenizer.no_padding()
    tokenizer.no_truncation()

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids) if text else 0

    return count


def token_counters(named: Mapping[str, str | Path]) -> dict[str, Callable[[str], int]]:
    """A counter per name."""
    return {name: token_counter(path) for name, path in named.items()}
