"""``focal`` command line. Subcommands: ``demo`` (load the default model, score and generate)."""

from __future__ import annotations

import argparse
import sys
import time

import torch

DEMO_QUESTION = "Which river flows through Paris?"
DEMO_PASSAGES = [
    "The Seine is a 777-kilometre-long river in northern France. It flows through Paris "
    "into the English Channel at Le Havre.",
    "The Danube is the second-longest river in Europe. It flows through Vienna, Bratislava, "
    "Budapest and Belgrade before reaching the Black Sea.",
]


def _demo(args: argparse.Namespace) -> int:
    from engine import Engine

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="focal", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="load a model, score passages against a question, generate an answer")
    demo.add_argument("--model", default=None, help="GGUF file or HF directory (default: the embedded SmolLM2)")
    demo.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: %(default)s)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
