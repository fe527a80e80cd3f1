"""``focal call``: send questions from a JSONL file to a running service and print the prompts."""

from __future__ import annotations

import argparse
import sys

from compressor.cli.inputs import chunk_of, read_chunks
from compressor.compression.request import DEFAULT_METHOD, METHODS


def run(args: argparse.Namespace) -> int:
    import grpc

    from compressor.client import FocalClient

    _, questions = read_chunks(args.inputs)
    with FocalClient(args.target, token=args.token, root_ca=args.ca) as client:
        for row in questions:
            chunks = [] if args.retrieve_top_k else [(str(c.get("id", i)), chunk_of(i, c).text)
                                                     for i, c in enumerate(row["chunks"])]
            try:
                reply = client.compress(row["question"], chunks, rate=None if args.adaptive else args.rate,
                                        target_tokens=args.target_tokens, method=args.method,
                                        adaptive=args.adaptive, retrieve_top_k=args.retrieve_top_k,
                                        namespace=args.namespace)
            except grpc.RpcError as error:
                print(f"focal call: {error.code().name}: {error.details()}", file=sys.stderr)
                return 1
            print(reply.prompt)
            usage = reply.usage
            print(f"tokens {usage.original_tokens} -> {usage.compressed_tokens} ({usage.ratio:.1f}x fewer), "
                  f"{reply.timings_ms['total']:.0f} ms on the server, request {reply.request_id}", file=sys.stderr)
    return 0


def add_parser(commands) -> None:
    call = commands.add_parser("call", help="send JSONL questions ({question, chunks}) to a running service")
    call.add_argument("inputs", nargs="+")
    call.add_argument("--target", default="127.0.0.1:50051")
    call.add_argument("--rate", type=float, default=0.25, help="default: %(default)s")
    call.add_argument("--adaptive", action="store_true",
                      help="keep what is relevant instead of --rate (--target-tokens: a ceiling)")
    call.add_argument("--target-tokens", type=int, default=None, help="with --adaptive: the ceiling in tokens")
    call.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="default: %(default)s")
    call.add_argument("--token", default=None, help="bearer token, when the service requires one")
    call.add_argument("--ca", default=None, help="PEM CA bundle: connect with TLS")
    call.add_argument("--retrieve-top-k", type=int, default=0,
                      help="send only the question: the server retrieves this many chunks from its index")
    call.add_argument("--namespace", default="", help="index namespace for --retrieve-top-k")
    call.set_defaults(run=run)
