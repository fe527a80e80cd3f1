"""``focal compress``: compress chunks for a question, locally (the prompt to stdout, a summary to stderr)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from compressor.cli.inputs import chunk_of, read_chunks
from compressor.compression.request import (
    DEFAULT_METHOD,
    METHODS,
    REORDERS,
    CompressionInputError,
    CompressOptions,
    CompressRequest,
)


def run(args: argparse.Namespace) -> int:
    import torch

    from compressor.compression.pipeline import Compressor
    from engine import Engine
    from engine.device import parse_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    options = CompressOptions(force_tokens=args.force_token, reorder=args.reorder, instruction=args.instruction,
                              separator=args.separator.encode().decode("unicode_escape"))
    try:
        chunks, questions = read_chunks(args.inputs)
        if chunks and not args.query:
            raise CompressionInputError("--query", "is required when the inputs are chunks")
        requests = [CompressRequest(args.query or "", chunks, args.rate, args.target_tokens, args.method,
                                    args.adaptive, options)]
        if questions:
            requests = [CompressRequest(q["question"], [chunk_of(i, c) for i, c in enumerate(q["chunks"])],
                                        args.rate, args.target_tokens, args.method, args.adaptive, options)
                        for q in questions]
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


def add_parser(commands) -> None:
    compress = commands.add_parser("compress", help="compress retrieved chunks for a question")
    compress.add_argument("inputs", nargs="+", help="JSONL of chunks or of questions (shared data schema), "
                                                     "or plain files (one chunk each)")
    compress.add_argument("--query", "-q", help="the question (required for chunk inputs)")
    budget = compress.add_mutually_exclusive_group()
    budget.add_argument("--rate", type=float, default=None, help="fraction of the context tokens to keep (0, 1]")
    budget.add_argument("--target-tokens", type=int, default=None,
                        help="token budget for the kept context (with --adaptive: its ceiling)")
    compress.add_argument("--adaptive", action="store_true",
                          help="no fixed rate: keep what is relevant to the question and drop the rest")
    compress.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="default: %(default)s")
    compress.add_argument("--reorder", choices=REORDERS, default="original", help="default: %(default)s")
    compress.add_argument("--instruction", default="", help="text put before the context, never compressed")
    compress.add_argument("--separator", default="\\n\\n", help="between kept chunks (escapes allowed)")
    compress.add_argument("--force-token", action="append", default=[], help="a word never dropped (repeatable)")
    compress.add_argument("--json", action="store_true", help="print the full result as JSON, one line per request")
    compress.add_argument("--model", default=None, help="GGUF file or HF directory (default: the embedded SmolLM2)")
    compress.add_argument("--dtype", default="auto", help="auto (bf16 where the CPU has bf16 units), float32, bfloat16")
    compress.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    compress.set_defaults(run=run)
