"""``focal demo``: load a model, score passages against a question, generate an answer."""

from __future__ import annotations

import argparse
import time

DEMO_QUESTION = "Which river flows through Paris?"
DEMO_PASSAGES = [
    "The Seine is a 777-kilometre-long river in northern France. It flows through Paris "
    "into the English Channel at Le Havre.",
    "The Danube is the second-longest river in Europe. It flows through Vienna, Bratislava, "
    "Budapest and Belgrade before reaching the Black Sea.",
]


def run(args: argparse.Namespace) -> int:
    import torch

    from engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    engine = Engine.load(args.model)
    print(f"loaded {args.model or 'default model (SmolLM2-135M-Instruct, Q4_1 GGUF)'} in "
          f"{time.perf_counter() - started:.1f}s: {engine.config.model_type}, "
          f"{engine.config.num_hidden_layers} layers, vocab {engine.config.vocab_size}")
    question = engine.encode(f" Question: {DEMO_QUESTION}")
    print("\nlog-likelihood of the question given each passage (higher = more relevant):")
    for passage in DEMO_PASSAGES:
        started = time.perf_counter()
        score = engine.score(engine.encode(passage), [question])[0]
        print(f"  {score.logprobs.mean().item():7.3f} nats/token  ({time.perf_counter() - started:.2f}s)  "
              f"{passage[:60]}...")
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{DEMO_PASSAGES[0]}\n\n{DEMO_QUESTION} Answer in a few words."}])
    started = time.perf_counter()
    result = engine.generate(prompt, max_new_tokens=24, stop=["\n\n"])
    elapsed = time.perf_counter() - started
    print(f"\ngenerated ({len(result.token_ids)} tokens, {elapsed:.2f}s, {result.finish_reason}): {result.text!r}")
    return 0


def add_parser(commands) -> None:
    demo = commands.add_parser("demo", help="load a model, score passages against a question, generate an answer")
    demo.add_argument("--model", default=None, help="GGUF file or HF directory (default: the embedded SmolLM2)")
    demo.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    demo.set_defaults(run=run)
