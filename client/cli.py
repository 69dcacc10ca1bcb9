"""The ``improv-store`` command: the people's tools (put, get, ls, rm, watch, info, health,
promote).

``serve`` and ``verify`` are the server's: this process replaces itself with
``python -m improv_store.service`` for them (same PID, so SIGTERM reaches the
server), because the client never imports the server.

Exit codes: 0 success, 1 object not found (or health not SERVING), 2 usage (or a
local file that cannot be read or written), 3 store unreachable (TLS handshake
failures included), 4 any other store error, 5 access refused (missing or wrong
token, UNAUTHENTICATED or PERMISSION_DENIED).
"""

from __future__ import annotations

import argparse
import enum
import io
import os
import pprint
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import grpc
import numpy as np

from improv_store import __version__
from improv_store.protocol import ID_LENGTH

from .errors import (
    ObjectNotFound,
    PermissionDenied,
    StoreError,
    StoreUnavailable,
    Unauthenticated,
)
from .ids import ObjectID
from .models import Event, ObjectInfo, ReplicationInfo, StoreInfo
from .store_client import Ref, StoreClient


class Exit(enum.IntEnum):
    """The command's exit statuses, so that scripts can tell a missing object from an outage."""

    NOT_FOUND = 1
    UNREACHABLE = 3
    STORE_ERROR = 4
    ACCESS_DENIED = 5


# The server's commands, run by exec'ing the server's module (see ``main``).
SERVER_COMMANDS = {
    "serve": "run the store server",
    "verify": "check every stored payload in a data directory against its checksum",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``improv-store`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in SERVER_COMMANDS:
        exec_server(args_list)
    parser = argparse.ArgumentParser(
        prog="improv-store",
        description="An object store for real-time experiments.",
    )
    parser.add_argument("--version", action="version", version=f"improv-store {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in SERVER_COMMANDS.items():
        # Listed in --help only: a server command never reaches this parser (exec above).
        subparsers.add_parser(name, help=help_text, add_help=False)
    add_parsers(subparsers)
    args = parser.parse_args(args_list)
    result: int = args.handler(args)
    return result


def exec_server(argv: Sequence[str]) -> NoReturn:
    """Become ``python -m improv_store.service ARGV``: the same process, so the same PID
    (a container's PID 1 stays the server) and the same signals."""
    os.execv(sys.executable, [sys.executable, "-m", "improv_store.service", *argv])


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the client commands on the top-level ``improv-store`` parser."""

    def command(name: str, handler: Callable[..., int], help_text: str) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        parser.add_argument(
            "--address",
            default=None,
            help="store address: unix socket path, unix:///path or host:port; several,"
            " separated by commas, for a primary and its followers (reads go to the"
            " nearest, writes to the primary)"
            " (default $IMPROV_STORE_ADDRESS, else unix:///tmp/improv-store.sock)",
        )
        parser.add_argument(
            "--token-file",
            help="file with the store's token (default $IMPROV_STORE_TOKEN_FILE;"
            " $IMPROV_STORE_TOKEN holds the token itself)",
        )
        parser.add_argument(
            "--tls-ca",
            help="PEM CAs to trust for a TLS store over TCP; turns TLS on"
            " (default $IMPROV_STORE_TLS_CA; IMPROV_STORE_TLS=1 for the system's CAs)",
        )
        parser.add_argument(
            "--tls-cert",
            help="PEM client certificate for mutual TLS (default $IMPROV_STORE_TLS_CERT)",
        )
        parser.add_argument(
            "--tls-key", help="PEM key of --tls-cert (default $IMPROV_STORE_TLS_KEY)"
        )
        parser.set_defaults(handler=_guarded(handler))
        return parser

    p = command("put", _put, "store a file (or stdin) as an object; prints its ID")
    p.add_argument("file", help="file to store, or - for stdin; .npy files are stored as arrays")
    p.add_argument("--name", help="name to store it under")
    p.add_argument("--replace", action="store_true", help="delete older objects with the name")

    p = command("get", _get, "fetch an object by ID (40 hex digits) or name")
    p.add_argument("ref", help="object ID in hex, or a name (newest object with it)")
    p.add_argument("-o", "--output", help="write to this file (arrays as .npy); default stdout")
    p.add_argument("--wait", type=float, default=None, help="seconds to wait for it to appear")

    p = command("ls", _ls, "list objects, oldest first")
    p.add_argument("prefix", nargs="?", default="", help="only names starting with this")

    p = command("rm", _rm, "delete objects by ID or name, or all that match the options")
    p.add_argument("refs", nargs="*", help="object IDs in hex, or names")
    p.add_argument("--prefix", default="", help="instead: every object named with this prefix")
    p.add_argument("--before-sequence", type=int, default=0,
                   help="instead: every object stored before this sequence")
    p.add_argument("--older-than", type=float, default=None, metavar="SECONDS",
                   help="instead: every object created more than this long ago")
    p.add_argument("--all", action="store_true", help="instead: every object in the store")

    p = command("watch", _watch, "print changes as they happen (Ctrl-C to stop)")
    p.add_argument("prefix", nargs="?", default="", help="only names starting with this")
    p.add_argument("--since", type=int, default=None, help="replay history from this sequence")
    p.add_argument("--count", type=int, default=None, help="stop after this many events")

    command("info", _info, "show the server's version, limits, usage and replication")
    command("health", _health, "exit 0 when the server reports SERVING")
    command(
        "promote",
        _promote,
        "make a follower a writable primary with a new store id (when its primary is lost)",
    )


def _guarded(handler: Callable[[StoreClient, argparse.Namespace], int]) -> Callable[..., int]:
    """Run a command with a client, turning store errors into messages and exit codes."""

    def run(args: argparse.Namespace) -> int:
        try:
            with StoreClient(
                args.address,
                token_file=args.token_file,
                tls_ca=args.tls_ca,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
            ) as store:
                return handler(store, args)
        except ObjectNotFound as exc:
            _error(str(exc))
            return Exit.NOT_FOUND
        except StoreUnavailable as exc:
            _error(f"cannot reach the store: {exc}")
            return Exit.UNREACHABLE
        except (Unauthenticated, PermissionDenied) as exc:
            _error(f"access refused: {exc}")
            return Exit.ACCESS_DENIED
        except StoreError as exc:
            _error(f"{exc.code.name}: {exc}")
            return Exit.STORE_ERROR
        except (OSError, ValueError) as exc:  # after StoreError: some are OSErrors too
            _error(str(exc))
            return 2
        except KeyboardInterrupt:
            return 0

    return run


def _error(message: str) -> None:
    sys.stderr.write(f"improv-store: {message}\n")


def parse_ref(text: str) -> Ref:
    """40 hex digits (an ID's bytes) are an object ID; anything else is a name."""
    is_id = re.fullmatch(f"[0-9a-fA-F]{{{2 * ID_LENGTH}}}", text)
    return ObjectID.from_hex(text) if is_id else text


def _put(store: StoreClient, args: argparse.Namespace) -> int:
    if args.file == "-":
        obj: Any = sys.stdin.buffer.read()
    elif args.file.endswith(".npy"):
        obj = np.load(args.file, allow_pickle=False)
    else:
        with open(args.file, "rb") as handle:
            obj = handle.read()
    if args.replace:
        if not args.name:
            _error("--replace needs --name")
            return 2
        object_id = store.replace(args.name, obj)
    else:
        object_id = store.put(obj, name=args.name)
    print(object_id.hex())
    return 0


def _get(store: StoreClient, args: argparse.Namespace) -> int:
    obj = store.get(parse_ref(args.ref), timeout=args.wait)
    if isinstance(obj, np.ndarray):
        if args.output:
            with open(args.output, "wb") as handle:
                np.save(handle, obj)
        elif sys.stdout.isatty():
            print(obj)
        else:
            buffer = io.BytesIO()
            np.save(buffer, obj)
            sys.stdout.buffer.write(buffer.getvalue())
    elif isinstance(obj, bytes):
        if args.output:
            with open(args.output, "wb") as handle:
                handle.write(obj)
        else:
            sys.stdout.buffer.write(obj)
    else:
        text = pprint.pformat(obj)
        if args.output:
            with open(args.output, "w") as handle:
                handle.write(text + "\n")
        else:
            print(text)
    return 0


def _ls(store: StoreClient, args: argparse.Namespace) -> int:
    print(f"{'ID':40}  {'SEQ':>8}  {'SIZE':>10}  {'ENCODING':8}  {'CREATED':19}  NAME")
    for info in store.list(args.prefix):
        print(_object_line(info))
    return 0


def _object_line(info: ObjectInfo) -> str:
    kind = info.encoding
    if info.dtype:
        kind = f"{info.dtype}{list(info.shape or ())}"
    created = info.created.strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"{info.id.hex()}  {info.sequence:>8}  {_size(info.size):>10}  {kind:8}  {created}"
        f"  {info.name}"
    )


def _size(size: int) -> str:
    scaled = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if scaled < 1024 or unit == "GiB":
            return f"{scaled:.0f} {unit}" if unit == "B" else f"{scaled:.1f} {unit}"
        scaled /= 1024
    return str(size)


def _rm(store: StoreClient, args: argparse.Namespace) -> int:
    matching = args.prefix or args.before_sequence or args.older_than is not None or args.all
    if bool(args.refs) == bool(matching):
        _error("rm takes object IDs or names, or the options that match objects: not both")
        return 2
    if matching:
        created_before = None if args.older_than is None else time.time() - args.older_than
        deleted = store.delete_matching(args.prefix, before_sequence=args.before_sequence,
                                        created_before=created_before, everything=args.all)
        print(f"deleted {deleted} objects")
        return 0
    missing = 0
    for text in args.refs:
        try:
            for object_id in store.delete(parse_ref(text)):
                print(f"deleted {object_id.hex()}")
        except ObjectNotFound as exc:
            _error(str(exc))
            missing += 1
    return Exit.NOT_FOUND if missing else 0


def _watch(store: StoreClient, args: argparse.Namespace) -> int:
    with store.subscribe(args.prefix, since=args.since) as events:
        for count, event in enumerate(events, start=1):
            print(_event_line(event), flush=True)
            if args.count is not None and count >= args.count:
                break
    return 0


def _event_line(event: Event) -> str:
    info = event.object
    line = (
        f"{event.sequence:>8}  {event.time.strftime('%H:%M:%S.%f')[:-3]}  {event.type:7}"
        f"  {info.id.hex()}  {_size(info.size):>10}  {info.name}"
    )
    if event.replaced:
        line += f"  (replaced {len(event.replaced)})"
    return line


def _info(store: StoreClient, args: argparse.Namespace) -> int:
    info = store.info()
    rows = [
        ("address", store.address),
        ("version", info.version),
        ("store id", info.store_id),
        ("durability", info.durability),
        *_replication_rows(info.replication),
        ("objects", str(info.object_count)),
        ("bytes", f"{info.total_bytes} ({_size(info.total_bytes)})"),
        ("last sequence", str(info.last_sequence)),
        ("committed sequence", str(info.committed_sequence)),
        ("oldest replayable", str(info.oldest_sequence)),
        ("subscribers", str(info.subscriber_count)),
        ("started", info.started.isoformat(timespec="seconds")),
        ("max object size", _size(info.max_object_size)),
        ("inline limit", _size(info.inline_limit)),
        (
            "shared memory",
            f"{_size(info.arena_used)} used of {_size(info.arena_capacity)},"
            f" {_size(info.arena_pinned)} pinned",
        ),
        ("resident objects", str(info.resident_objects)),
        ("evictions", str(info.evictions)),
        ("sessions", str(info.sessions)),
        ("requests", f"{info.requests} ({info.failed_requests} failed)"),
        ("commits", _commits(info)),
        ("subscriber lag", f"{info.subscriber_lag} events"),
        ("this client", "colocated (shared memory)" if store.colocated else "remote (inline)"),
    ]
    for key, value in rows:
        print(f"{key + ':':20} {value}")
    return 0


def _replication_rows(replication: ReplicationInfo) -> list[tuple[str, str]]:
    """``info``'s lines on replication: the role, and how a follower is doing."""
    if replication.role != "follower" and replication.promoted_from:
        return [("role", replication.role),
                ("promoted from", f"{replication.promoted_from} at sequence"
                                  f" {replication.promoted_at_sequence}")]
    if replication.role != "follower":
        return [("role", replication.role)]
    return [
        ("role", replication.role),
        ("primary", replication.primary),
        ("replication state", replication.state),
        ("applied sequence", str(replication.applied_sequence)),
        ("primary sequence", str(replication.primary_sequence)),
        ("lag", f"{replication.lag_events} events, {replication.lag_seconds:.3f} s"),
        ("resyncs", str(replication.resyncs)),
        ("last error", replication.last_error or "none"),
    ]


def _commits(info: StoreInfo) -> str:
    if not info.commits:
        return "0"
    mean_ms = info.commit_seconds / info.commits * 1e3
    per_commit = info.committed_changes / info.commits
    return f"{info.commits} (mean {mean_ms:.2f} ms, {per_commit:.1f} changes each)"


def _promote(store: StoreClient, args: argparse.Namespace) -> int:
    try:
        promotion = store.promote()
    except StoreError as exc:  # FAILED_PRECONDITION: a primary already
        if exc.code != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        _error(f"cannot promote the store at {store.address}: {exc}")
        return Exit.STORE_ERROR
    print(f"{'promoted:':20} {store.address}")
    print(f"{'store id:':20} {promotion.store_id}")
    print(f"{'last sequence:':20} {promotion.last_sequence}")
    return 0


def _health(store: StoreClient, args: argparse.Namespace) -> int:
    status = store.health()
    print(status)
    return 0 if status == "SERVING" else Exit.NOT_FOUND
