"""``focal call``: the inputs of ``focal compress`` (chunk files with ``--query``, or questions in
the shared data schema), compressed by a running service; the prompts go to stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys

from compressor.cli.inputs import add_request_arguments, requests_of
from compressor.compression.request import CompressionInputError


def run(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from compressor.client import FocalClient, FocalError

    try:
        requests = requests_of(args, chunks_optional=bool(args.retrieve_top_k))
        client = FocalClient(args.target, token=args.token or None, root_ca=args.ca, client_cert=args.client_cert,
                             client_key=args.client_key, timeout=args.timeout)
    except (CompressionInputError, OSError, ValueError) as exc:
        print(f"focal call: {exc}", file=sys.stderr)
        return 2
    with client:
        for request in requests:
            options = request.options
            try:
                chunks = [] if args.retrieve_top_k else [(c.id, c.text) for c in request.chunks]
                reply = client.compress(request.query, chunks, rate=request.rate,
                                        target_tokens=request.target_tokens, method=request.method,
                                        adaptive=request.adaptive, reorder=options.reorder,
                                        instruction=options.instruction, force_tokens=options.force_tokens,
                                        separator=options.separator, retrieve_top_k=args.retrieve_top_k,
                                        namespace=args.namespace, budget_tokenizer=args.budget_tokenizer)
            except FocalError as error:
                print(f"focal call: {error.code().name}: {error.details()}", file=sys.stderr)
                return 1
            if args.json:
                print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True)))
            else:
                print(reply.prompt)
            usage = reply.usage
            print(f"{usage.tokenizer} tokens {usage.original_tokens} -> {usage.compressed_tokens} "
                  f"({usage.ratio:.1f}x fewer), "
                  f"{reply.timings_ms['total']:.0f} ms on the server, request {reply.request_id}", file=sys.stderr)
    return 0


def add_client_arguments(parser: argparse.ArgumentParser, target: str | None = "127.0.0.1:50051") -> None:
    """How every client command reaches a server: the same flags and the same variable everywhere."""
    parser.add_argument("--target", default=target, help="HOST:PORT of the server" +
                        (" (default: %(default)s)" if target else " (instead of --data-dir)"))
    parser.add_argument("--token", default=os.environ.get("FOCAL_TOKEN"),
                        help="bearer token, when the service requires one (default: $FOCAL_TOKEN)")
    parser.add_argument("--ca", default=None, help="PEM CA bundle of the server's certificate: connect with TLS")
    parser.add_argument("--client-cert", default=None, help="with --ca: PEM client certificate (mTLS)")
    parser.add_argument("--client-key", default=None, help="with --client-cert: its PEM private key")


def add_parser(commands) -> None:
    call = commands.add_parser("call", help="compress chunk files or JSONL questions on a running service")
    add_request_arguments(call)
    add_client_arguments(call)
    call.add_argument("--timeout", type=float, default=60.0, help="seconds per call (default: %(default)s)")
    call.add_argument("--retrieve-top-k", type=int, default=0,
                      help="send only the question: the server retrieves this many chunks from its index")
    call.add_argument("--namespace", default="", help="index namespace for --retrieve-top-k")
    call.add_argument("--budget-tokenizer", default="",
                      help="count the budget and usage in this tokenizer's tokens (a name the server loads with "
                           "its tokenizers setting, e.g. your downstream model's)")
    call.set_defaults(run=run)
