"""``focal serve``: run the gRPC service until SIGTERM (then drain)."""

from __future__ import annotations

import argparse
import sys

from compressor.service.settings import add_arguments, resolve


def run(args: argparse.Namespace) -> int:
    from compressor.service.process import serve

    try:
        settings = resolve(args)
    except (ValueError, OSError) as exc:
        print(f"focal serve: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


def add_parser(commands) -> None:
    serve = commands.add_parser("serve", help="run the gRPC service until SIGTERM (then drain)",
                                description="Settings come from flags, FOCAL_* environment variables and an "
                                            "optional TOML file, in that order of precedence.")
    add_arguments(serve)
    serve.set_defaults(run=run)
