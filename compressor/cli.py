"""``focal`` command line.

- ``focal compress``: compress chunks for a question (JSONL of chunks, plain files, or a data set
  of questions in the shared schema); the prompt goes to stdout, a summary to stderr.
- ``focal serve``: run the gRPC service (also ``python -m compressor serve``).
- ``focal call``: send questions from a JSONL file to a running service and print the prompts.
- ``focal index``: add documents to the retrieval index, search it, show its stats, rebuild it.
- ``focal demo``: load a model, score passages against a question, generate an answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from compressor.jsonl import jsonl_rows
from compressor.types import METHODS, REORDERS, Chunk, CompressionInputError, CompressOptions, CompressRequest

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


def _read_chunks(paths: list[str]) -> tuple[list[Chunk], list[dict]]:
    """Chunks from JSONL files ({"id"?, "text", "score"?, "metadata"?} per line) or plain files
    (one chunk each); questions in the shared data schema ({"question", "chunks": [...]}) are
    returned separately."""
    chunks: list[Chunk] = []
    questions: list[dict] = []
    for path in map(Path, paths):
        if path.suffix != ".jsonl":
            chunks.append(Chunk(str(path), path.read_text(errors="replace")))
            continue
        for number, row in jsonl_rows(path, CompressionInputError):
            if "question" in row and "chunks" in row:
                questions.append(row)
            elif isinstance(row.get("text"), str):
                chunks.append(Chunk(str(row.get("id", f"{path.name}:{number}")), row["text"], row.get("score"),
                                    row.get("metadata") or {}))
            else:
                raise CompressionInputError(f"{path}:{number}", "needs a 'text' string or 'question' and 'chunks'")
    return chunks, questions


def _chunk_of(index: int, raw: dict) -> Chunk:
    title = raw.get("title")
    text = f"{title}\n{raw['text']}" if title else raw["text"]
    return Chunk(str(raw.get("id", index)), text, raw.get("score"))


def _compress(args: argparse.Namespace) -> int:
    from compressor.compressor import Compressor
    from engine import Engine
    from engine.device import parse_dtype

    torch.set_num_threads(args.threads)
    options = CompressOptions(force_tokens=args.force_token, reorder=args.reorder, instruction=args.instruction,
                              separator=args.separator.encode().decode("unicode_escape"))
    try:
        chunks, questions = _read_chunks(args.inputs)
        if chunks and not args.query:
            raise CompressionInputError("--query", "is required when the inputs are chunks")
        requests = [CompressRequest(args.query or "", chunks, args.rate, args.target_tokens, args.method, options)]
        if questions:
            requests = [CompressRequest(q["question"], [_chunk_of(i, c) for i, c in enumerate(q["chunks"])],
                                        args.rate, args.target_tokens, args.method, options) for q in questions]
        for request in requests:
            request.validate()
    except (CompressionInputError, OSError) as exc:
        print(f"focal compress: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    compressor = Compressor(Engine.load(args.model, dtype=parse_dtype(args.dtype)))
    print(f"model loaded in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    before = after = 0
    started = time.perf_counter()
    for number, request in enumerate(requests, 1):
        result = compressor.compress(request)
        before += result.original_tokens
        after += result.compressed_tokens
        if args.json:
            print(json.dumps({**asdict(result), "ratio": result.ratio}))
        else:
            print(result.prompt + ("\n" + "=" * 40 if len(requests) > 1 else ""))
        if len(requests) > 1:
            print(f"[{number}/{len(requests)}] {result.original_tokens} -> {result.compressed_tokens} tokens "
                  f"({result.timings['total']:.2f}s)", file=sys.stderr)
    elapsed = time.perf_counter() - started
    print(f"tokens {before} -> {after} ({before / max(after, 1):.1f}x fewer), {len(requests)} request(s), "
          f"{elapsed:.2f}s", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from compressor import settings as settings_module
    from compressor.server import serve

    try:
        settings = settings_module.resolve(args)
    except (ValueError, OSError) as exc:
        print(f"focal serve: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


def _call(args: argparse.Namespace) -> int:
    import grpc

    from compressor.client import FocalClient

    _, questions = _read_chunks(args.inputs)
    with FocalClient(args.target, token=args.token, root_ca=args.ca) as client:
        for row in questions:
            chunks = [] if args.retrieve_top_k else [(str(c.get("id", i)), _chunk_of(i, c).text)
                                                     for i, c in enumerate(row["chunks"])]
            try:
                reply = client.compress(row["question"], chunks, rate=args.rate, method=args.method,
                                        retrieve_top_k=args.retrieve_top_k, namespace=args.namespace)
            except grpc.RpcError as error:
                print(f"focal call: {error.code().name}: {error.details()}", file=sys.stderr)
                return 1
            print(reply.prompt)
            usage = reply.usage
            print(f"tokens {usage.original_tokens} -> {usage.compressed_tokens} ({usage.ratio:.1f}x fewer), "
                  f"{reply.timings_ms['total']:.0f} ms on the server, request {reply.request_id}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="focal", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="load a model, score passages against a question, generate an answer")
    demo.add_argument("--model", default=None, help="GGUF file or HF directory (default: the embedded SmolLM2)")
    demo.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: %(default)s)")
    demo.set_defaults(run=_demo)

    compress = commands.add_parser("compress", help="compress retrieved chunks for a question")
    compress.add_argument("inputs", nargs="+", help="JSONL of chunks or of questions (shared data schema), "
                                                     "or plain files (one chunk each)")
    compress.add_argument("--query", "-q", help="the question (required for chunk inputs)")
    budget = compress.add_mutually_exclusive_group()
    budget.add_argument("--rate", type=float, default=None, help="fraction of the context tokens to keep (0, 1]")
    budget.add_argument("--target-tokens", type=int, default=None, help="token budget for the kept context")
    compress.add_argument("--method", choices=METHODS, default="token", help="default: %(default)s")
    compress.add_argument("--reorder", choices=REORDERS, default="original", help="default: %(default)s")
    compress.add_argument("--instruction", default="", help="text put before the context, never compressed")
    compress.add_argument("--separator", default="\\n\\n", help="between kept chunks (escapes allowed)")
    compress.add_argument("--force-token", action="append", default=[], help="a word never dropped (repeatable)")
    compress.add_argument("--json", action="store_true", help="print the full result as JSON, one line per request")
    compress.add_argument("--model", default=None, help="GGUF file or HF directory (default: the embedded SmolLM2)")
    compress.add_argument("--dtype", default="auto", help="auto (bf16 where the CPU has bf16 units), float32, bfloat16")
    compress.add_argument("--threads", type=int, default=torch.get_num_threads(), help="default: %(default)s")
    compress.set_defaults(run=_compress)

    from compressor.settings import add_arguments

    serve = commands.add_parser("serve", help="run the gRPC service until SIGTERM (then drain)",
                                description="Settings come from flags, FOCAL_* environment variables and an "
                                            "optional TOML file, in that order of precedence.")
    add_arguments(serve)
    serve.set_defaults(run=_serve)

    call = commands.add_parser("call", help="send JSONL questions ({question, chunks}) to a running service")
    call.add_argument("inputs", nargs="+")
    call.add_argument("--target", default="127.0.0.1:50051")
    call.add_argument("--rate", type=float, default=0.25)
    call.add_argument("--method", choices=METHODS, default="token")
    call.add_argument("--token", default=None, help="bearer token, when the service requires one")
    call.add_argument("--ca", default=None, help="PEM CA bundle: connect with TLS")
    call.add_argument("--retrieve-top-k", type=int, default=0,
                      help="send only the question: the server retrieves this many chunks from its index")
    call.add_argument("--namespace", default="", help="index namespace for --retrieve-top-k")
    call.set_defaults(run=_call)

    from compressor.index_cli import add_parser as add_index_parser

    add_index_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
