"""The ``improv-store`` command: ``serve`` and ``verify`` are the server's, the rest the client's.

This dispatcher is the one place that knows both halves, so the server never
imports the client and the client never imports the server.
"""

from __future__ import annotations

import argparse
import sys

from improv_store import __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``improv-store`` console script."""
    from improv_store.client import cli as client_cli
    from improv_store.service import cli as service_cli

    parser = argparse.ArgumentParser(
        prog="improv-store",
        description="An object store for real-time experiments.",
    )
    parser.add_argument("--version", action="version", version=f"improv-store {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    service_cli.add_parser(subparsers)
    service_cli.add_verify_parser(subparsers)
    client_cli.add_parsers(subparsers)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
