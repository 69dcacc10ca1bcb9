"""The server's commands, ``serve`` and ``verify``: ``python -m improv_store.service``.

The ``improv-store`` command (the client's dispatcher) execs this module for
them, so the client never imports the server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

import lmdb

from .config import add_arguments, config_from_args
from .server import run
from .verify import verify

EXIT_CLEAN, EXIT_CORRUPT, EXIT_CANNOT_OPEN = 0, 1, 2

COMMANDS = ("serve", "verify")


def main(argv: Sequence[str]) -> int:
    """Run ``serve`` or ``verify``; without either command first, the arguments are serve's."""
    if not argv or argv[0] not in COMMANDS:
        argv = ["serve", *argv]
    parser = argparse.ArgumentParser(
        prog="improv-store", description="The improv-store server's commands."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve_parser(subparsers)
    add_verify_parser(subparsers)
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``serve``: one flag per server option."""
    parser = subparsers.add_parser(
        "serve",
        help="run the store server",
        description="Run the store server. Every flag also reads an IMPROV_STORE_* variable;"
        " a flag wins over its variable, which wins over the default.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=serve)


def add_verify_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``verify``, which reads the same --data-dir option as ``serve``."""
    parser = subparsers.add_parser(
        "verify",
        help="check every stored payload against its checksum",
        description="Check every payload in a data directory against its size and CRC32C."
        " Works on a stopped server's directory, and beside a running server (it then checks"
        " what the server has committed to disk). Exit 0: all sound; 1: corruption found"
        " (each corrupt object is listed by ID and name); 2: the directory cannot be read.",
    )
    add_arguments(parser, ["data_dir"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=verify_command)


def verify_command(args: argparse.Namespace) -> int:
    """Verify a data directory, print the report and return the exit code."""
    try:
        report = verify(args.data_dir)
    except (OSError, lmdb.Error) as exc:
        message = f"cannot open the data directory {args.data_dir}: {exc}"
        if args.json:
            print(json.dumps({"data_dir": args.data_dir, "error": message}))
        else:
            print(message, file=sys.stderr)
        return EXIT_CANNOT_OPEN
    print(report.to_json() if args.json else "\n".join(report.lines()))
    return EXIT_CLEAN if report.clean else EXIT_CORRUPT


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM/SIGINT, then end the process with its exit code.

    Once the store is closed everything is on disk, so the process exits
    without waiting for worker threads of calls that outlived the shutdown
    grace period (interpreter exit would join them, possibly forever).
    """
    configure_logging(args.log_format, args.log_level)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        logging.getLogger(__name__).error("bad configuration: %s", exc)
        return 2
    code = run(config)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def configure_logging(log_format: str, level: str) -> None:
    """Log to stderr in the server's format (``text`` or ``json``) from ``level`` up."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler])


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)
