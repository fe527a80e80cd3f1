"""``focal`` command line, one module per command family.

- ``focal compress``: compress chunks for a question (JSONL of chunks, plain files, or a data set
  of questions in the shared schema); the prompt goes to stdout, a summary to stderr.
- ``focal serve``: run the gRPC service (also ``python -m compressor serve``).
- ``focal call``: send questions from a JSONL file to a running service and print the prompts.
- ``focal health``: whether a server is serving (``--wait`` until it is).
- ``focal index``: add documents to the retrieval index, search it, show its stats, rebuild it.
- ``focal demo``: load a model, score passages against a question, generate an answer.
"""

from __future__ import annotations

import argparse

from compressor.cli import call, compress, demo, health, index, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="focal", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for family in (demo, compress, serve, call, health, index):
        family.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
