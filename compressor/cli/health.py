"""``focal health``: ask a server's ``grpc.health.v1`` whether it serves, optionally waiting until it does."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from compressor.client import wait_until_serving

    try:
        seconds = wait_until_serving(args.target, args.wait, args.service)
    except (TimeoutError, RuntimeError) as exc:
        print(f"focal health: {exc}", file=sys.stderr)
        return 1
    print(f"SERVING ({args.target}{', ' + args.service if args.service else ''}; waited {seconds:.1f} s)",
          file=sys.stderr)
    return 0


def add_parser(commands) -> None:
    health = commands.add_parser("health", help="check that a server is serving (exit 0) or not (exit 1)")
    health.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT (plaintext; default: %(default)s)")
    health.add_argument("--service", default="", help="a service name, e.g. focal.compressor.v1.Compressor "
                                                      "(default: the server as a whole)")
    health.add_argument("--wait", type=float, default=0, help="seconds to keep asking until it serves (default: 0)")
    health.set_defaults(run=run)
