"""The digest method: the model writes a short summary of the evidence for the question.

Extraction keeps the retrieved words; a digest can merge passages that each hold part of an
answer. The evidence is the sentence method's selection at ``DigestLimits.evidence_factor`` times
the budget (in the chunks' own order, numbered by chunk); the prompt is the model's own chat
template around an instruction that asks for a summary within the budget in words, numbers,
names and code identifiers copied exactly, and a citation of the evidence after each sentence.
The decode is greedy and speculative with prompt lookup (a digest copies long spans of its
evidence, which n-grams of the prompt predict), bounded in tokens and in seconds. The digest is
then cut after the last whole sentence that fits the budget, counted as the request counts it.

Each digest sentence names the chunks it came from: those it cites (``[2]``), or, when the model
cites nothing usable, the evidence that shares the largest part of its words (at least
``ATTRIBUTION_OVERLAP``); a sentence that matches no evidence names none, which says so honestly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from compressor.compression.request import CompressionInputError, DigestSentence
from compressor.text import segment
from engine import Engine, PromptLookup
from engine.api import StopCheck

CITATION = re.compile(r"\s*\[(\d+(?:\s*,\s*\d+)*)\]")
WORD = re.compile(r"\w+")
ATTRIBUTION_OVERLAP = 0.5  # fraction of a digest sentence's words that its evidence must hold
WORDS_PER_TOKEN = 0.7  # the word count the instruction asks for, per token of budget
INSTRUCTION = ("Using only the evidence below, write a short summary of what it says about the question, "
               "in at most {words} words. Copy numbers, names and code identifiers exactly as they are written. "
               "End each sentence with the numbers of the evidence it uses, like [1].")


@dataclass(frozen=True)
class DigestLimits:
    """What a digest may cost, whatever its budget."""

    evidence_factor: float = 3.0  # the evidence is the extractive selection at this times the budget
    max_tokens: int = 256  # tokens the model may generate
    max_seconds: float = 30.0  # seconds the model may spend generating; the digest keeps its whole sentences
    draft_tokens: int = 8  # tokens one speculative step may verify


@dataclass
class Digest:
    sentences: list[DigestSentence]
    finish_reason: str  # the decode's: "eos", "length" (the token limit), "time" or "stop"

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.sentences)


def digest_prompt(engine: Engine, question: str, evidence: list[str], budget: int) -> str:
    """The model's chat template around the instruction, the numbered evidence and the question."""
    words = max(8, int(budget * WORDS_PER_TOKEN))
    numbered = "\n\n".join(f"[{number}] {text}" for number, text in enumerate(evidence, 1))
    content = f"{INSTRUCTION.format(words=words)}\n\nEvidence:\n{numbered}\n\nQuestion: {question}"
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": content}])


def write_digest(engine: Engine, question: str, evidence: list[tuple[str, str]], budget: int,
                 limits: DigestLimits, count: Callable[[str], int], model_budget: int,
                 interrupt: StopCheck | None = None) -> Digest:
    """A digest of ``evidence`` ((chunk id, text) pairs) for ``question`` within ``budget`` tokens as
    ``count`` counts them (``model_budget``: the same budget in the model's tokens). ``interrupt`` is
    asked before every forward (the request's cancellation and deadline)."""
    prompt = digest_prompt(engine, question, [text for _, text in evidence], model_budget)
    room = engine.context_length - len(engine.encode(prompt))
    if room < 1:
        raise CompressionInputError("chunks", f"the digest's evidence and instruction fill the model's context "
                                              f"of {engine.context_length} tokens")
    generation = engine.generate(prompt, max_new_tokens=min(limits.max_tokens, model_budget + 16, room),
                                 drafter=PromptLookup(), draft_tokens=limits.draft_tokens, interrupt=interrupt,
                                 time_limit=limits.max_seconds)
    return Digest(fit(attributed(generation.text, evidence), budget, count), generation.finish_reason)


def attributed(text: str, evidence: list[tuple[str, str]]) -> list[DigestSentence]:
    """The digest's sentences without their citations, each with the ids of the chunks it came from.
    A sentence the model repeats (a small model can loop) is kept once."""
    words_of = [set(WORD.findall(body.lower())) for _, body in evidence]
    out, seen = [], set()
    for span in segment.sentences(text.strip()):
        raw = span.text(text.strip()).strip()
        cited = {int(n) for group in CITATION.findall(raw) for n in group.split(",")}
        clean = CITATION.sub("", raw).strip()
        key = " ".join(WORD.findall(clean.lower()))
        if not key or key in seen:
            continue
        seen.add(key)
        ids = [evidence[n - 1][0] for n in sorted(cited) if 1 <= n <= len(evidence)]
        if not ids:
            ids = _by_overlap(set(WORD.findall(clean.lower())), words_of, evidence)
        out.append(DigestSentence(clean, ids))
    return out


def _by_overlap(words: set[str], words_of: list[set[str]], evidence: list[tuple[str, str]]) -> list[str]:
    shares = [len(words & known) / max(len(words), 1) for known in words_of]
    best = max(shares, default=0.0)
    if best < ATTRIBUTION_OVERLAP:
        return []
    return [evidence[index][0] for index, share in enumerate(shares) if share == best]


def fit(sentences: list[DigestSentence], budget: int, count: Callable[[str], int]) -> list[DigestSentence]:
    """The longest run of leading sentences whose joined text fits ``budget`` tokens. When not even
    the first sentence fits, its leading words that do (the digest never exceeds the budget)."""
    kept: list[DigestSentence] = []
    for sentence in sentences:
        if count(" ".join(s.text for s in [*kept, sentence])) > budget:
            break
        kept.append(sentence)
    if kept or not sentences:
        return kept
    words = sentences[0].text.split()
    low, high = 0, len(words)  # binary search: the most leading words within the budget
    while low < high:
        middle = (low + high + 1) // 2
        if count(" ".join(words[:middle])) <= budget:
            low = middle
        else:
            high = middle - 1
    return [DigestSentence(" ".join(words[:low]), sentences[0].chunk_ids)] if low else []

