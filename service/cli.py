"""``improv-store serve``: start a store server from flags and IMPROV_STORE_* variables."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

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
    """Run the server until SIGTERM/SIGINT, then end the process with its exit code.

    Once the store is closed everything is on disk, so the process exits
    without waiting for worker threads of calls that outlived the shutdown
    grace period (interpreter exit would join them, possibly forever).
    """
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if args.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=args.log_level, handlers=[handler])
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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback, if any)."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)
