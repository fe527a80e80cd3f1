"""focal: compress the retrieved context of RAG pipelines with an embedded language model.

commands:
  compress   compress chunk files (with --query) or JSONL questions locally; the prompt to stdout
  serve      run the gRPC service (also: python -m compressor serve)
  call       the same inputs as compress, sent to a running service
  health     whether a server is serving (--wait: until it is)
  index      add documents to the retrieval index, search it, show its stats, rebuild or repair it
  demo       load a model, score passages against a question, generate an answer

Client commands (call, index --target) take --target, --token (or $FOCAL_TOKEN), --ca, --client-cert
and --client-key; health asks the plaintext health port.
"""

from __future__ import annotations

import argparse
import os
import sys

from compressor.cli import call, compress, demo, health, index, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="focal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for family in (demo, compress, serve, call, health, index):
        family.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # the reader went away (`focal ... | head`): end quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
