"""``focal compress``: compress chunks for a question, locally (the prompt to stdout, a summary to stderr)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from compressor.cli.inputs import add_request_arguments, requests_of
from compressor.compression.request import CompressionInputError


def run(args: argparse.Namespace) -> int:
    import torch

    from compressor.compression.pipeline import Compressor
    from engine import Engine
    from engine.device import parse_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        requests = requests_of(args)
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
    add_request_arguments(compress)
    compress.add_argument("--model", default=None, help="GGUF file or HF directory (default: the embedded SmolLM2)")
    compress.add_argument("--dtype", default="auto", help="auto (bf16 where the CPU has bf16 units), float32, bfloat16")
    compress.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    compress.set_defaults(run=run)
