"""``improv-store serve``: start a store server from flags and IMPROV_STORE_* variables."""

from __future__ import annotations

import argparse
import logging

from .config import add_serve_arguments, config_from_args
from .server import run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``serve`` on the top-level ``improv-store`` parser."""
    parser = subparsers.add_parser(
        "serve",
        help="run the store server",
        description="Run the store server. Every flag also reads an IMPROV_STORE_* variable.",
    )
    add_serve_arguments(parser)
    parser.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM/SIGINT; return the process exit code."""
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = config_from_args(args)
    except ValueError as exc:
        logging.getLogger(__name__).error("bad configuration: %s", exc)
        return 2
    return run(config)
