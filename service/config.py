"""Server configuration: each option declared once, as a field of ServerConfig.

A field made with ``option()`` is a server option: its flag (``--wal-size``),
its environment variable (``IMPROV_STORE_WAL_SIZE``), its parser, its help and
its row in docs/configuration.md are all derived from that one declaration.
``python -m improv_store.service.config --update docs/configuration.md``
regenerates the documented table; tests/test_config.py fails when it drifts.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any

from improv_store.protocol import INLINE_LIMIT, MAX_MESSAGE_SIZE, MAX_RESPONSE_SIZE

from .access import is_loopback, load_token

DURABILITY_MODES = ("sync", "async", "none")
ENV_PREFIX = "IMPROV_STORE_"

MiB = 1 << 20
GiB = 1 << 30

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Parse a byte count such as ``512``, ``64M``, ``2GiB`` or ``1.5g``."""
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    number = cleaned.rstrip("kmgt")
    unit = cleaned[len(number) :]
    if unit not in _SIZE_UNITS or not number:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512, 64M, 2G)")
    try:
        return int(float(number) * _SIZE_UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512, 64M, 2G)") from None


def format_size(size: int) -> str:
    """The shortest exact spelling ``parse_size`` reads back: ``2G``, ``64K``, ``1000``."""
    for unit, factor in sorted(_SIZE_UNITS.items(), key=lambda item: -item[1]):
        if size and size % factor == 0:
            return f"{size // factor}{unit.upper()}"
    return str(size)


def parse_mode(text: str) -> int:
    """Parse an octal permission mode such as ``0600`` or ``660``."""
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r} (use e.g. 0600)") from None


# Every spelling of a boolean the server and the clients read from the environment.
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}


def parse_flag(text: str) -> bool:
    """An IMPROV_STORE_* boolean: 1/true/yes/on, or 0/false/no/off/empty."""
    value = _BOOLEANS.get(text.strip().lower(), False if not text.strip() else None)
    if value is None:
        raise argparse.ArgumentTypeError(f"not a boolean: {text!r} (use 1 or 0)")
    return value


def parse_on_off(text: str) -> bool:
    """``on`` or ``off``, the spelling of switches that are on by default (the clients'
    spellings of the same variables, 1/0 and the rest, too)."""
    value = _BOOLEANS.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from 'on', 'off')")
    return value


@dataclass(frozen=True)
class Option:
    """How one ServerConfig field is set from a command line or the environment."""

    help: str
    # Text to value; ``options()`` fills it from the field's annotation when not given.
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] = ()
    # The default as the documentation says it, where the field's value does not.
    shown: str = ""

    def convert(self, text: str) -> Any:
        """The field's value for a flag's or variable's text; argparse reports the errors."""
        assert self.parse is not None, "options() gives every option its parser"
        try:
            value = self.parse(text)
        except ValueError:  # int() and float(): argparse would name the wrapper, not them
            name = getattr(self.parse, "__name__", "")
            raise argparse.ArgumentTypeError(f"invalid {name} value: {text!r}") from None
        if self.choices and value not in self.choices:
            allowed = ", ".join(repr(choice) for choice in self.choices)
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {allowed})")
        return value


def option(
    default: Any,
    help_text: str,
    *,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] = (),
    shown: str = "",
) -> Any:
    """A ServerConfig field that is also a server option (``parse`` defaults by its type)."""
    return field(default=default, metadata={"option": Option(help_text, parse, choices, shown)})


@dataclass(frozen=True)
class ServerConfig:
    """Everything a server needs to start; defaults suit one improv rig."""

    socket: str = option(
        "/tmp/improv-store.sock",
        "unix socket path (created with --socket-mode); empty: no unix socket",
    )
    socket_mode: int = option(0o600, "permissions of the unix socket, in octal", parse=parse_mode)
    listen: str = option("127.0.0.1:50051", "TCP host:port; empty: no TCP listener")
    tls_cert: str = option("", "PEM certificate (chain): TLS on the TCP listener, with --tls-key")
    tls_key: str = option("", "PEM private key of --tls-cert")
    tls_client_ca: str = option(
        "",
        "PEM CA certificates: TCP clients must present a certificate one of them signed"
        " (mutual TLS)",
    )
    token_file: str = option(
        "",
        "file holding a token every RPC must carry as 'authorization: Bearer TOKEN', on TCP,"
        " the unix socket and --web-listen; health checks stay open",
    )
    insecure: bool = option(
        False,
        "allow TCP beyond loopback with neither TLS nor a token, and --web-listen beyond"
        " loopback without a token (logs a warning)",
    )
    data_dir: str = option(
        "./improv-store-data", "LMDB environment directory (one server per directory)"
    )
    durability: str = option(
        "async",
        "sync: fsync before replying; async: commit every --commit-interval; none: memory only",
        choices=DURABILITY_MODES,
    )
    commit_interval: float = option(0.1, "seconds between background commits in async mode")
    log_apply_interval: float = option(
        1.0,
        "sync mode: seconds between applying the write-ahead log to LMDB, which is also"
        " applied when a quarter of it is written",
    )
    wal_size: int = option(
        32 * MiB,
        "sync mode: size of the preallocated write-ahead log that makes small writes durable"
        " with one fsync; 0: commit each batch to LMDB instead",
        parse=parse_size,
    )
    max_object_size: int = option(2 * GiB, "largest payload accepted", parse=parse_size)
    max_name_length: int = option(
        256,
        "longest object name (and List/Subscribe prefix) in UTF-8 bytes; longer is"
        " INVALID_ARGUMENT",
    )
    max_batch_size: int = option(
        1024, "most refs in a BatchGet or items in a BatchPut; more is INVALID_ARGUMENT"
    )
    event_retention: int = option(100_000, "events kept for Subscribe replay")
    expire_after: float = option(
        0.0,
        "delete objects older than this many seconds (each with its DELETE event), checked"
        " every second; 0: keep them",
    )
    max_stored_bytes: int = option(
        0,
        "when the stored payloads exceed this, delete the oldest objects until they take"
        " three quarters of it (what improv's harvester did); 0: no limit",
        parse=parse_size,
    )
    subscriber_buffer: int = option(10_000, "events buffered per subscriber before it is cut off")
    max_subscribers: int = option(64, "concurrent Subscribe streams; more is RESOURCE_EXHAUSTED")
    max_streams: int = option(
        48,
        "concurrent PutStream, GetStream and Session streams; more is RESOURCE_EXHAUSTED"
        " (with --max-subscribers, below --max-workers)",
    )
    max_workers: int = option(128, "server threads; each open stream holds one")
    initial_map_size: int = option(
        1 * GiB, "starting LMDB map size; it grows on demand", parse=parse_size
    )
    memory: int | None = option(
        None,
        "shared memory for objects, e.g. 4G, at least 4M (less is rounded up, with a warning);"
        " start-up says what to do when /dev/shm is too small (a container's default is"
        " 64 MB: run it with --shm-size)",
        parse=parse_size,
        shown="half of free /dev/shm",
    )
    lane: bool = option(
        True,
        "the local lane, on or off: a plain unix socket beside --socket (its path + '.lane')"
        " that colocated clients use for fast calls",
        parse=parse_on_off,
    )
    index_slots: int = option(
        1 << 16,
        "slots of the shared-memory object index that colocated clients read small objects"
        " from without a call (a power of two; 0: off)",
    )
    metrics_listen: str = option("", "host:port to serve Prometheus /metrics on; empty: off")
    web_listen: str = option(
        "",
        "host:port to serve the Connect protocol on, for browsers and curl (HTTP/1.1, no TLS;"
        " docs/browser.md); empty: off",
    )
    web_allow_origin: str = option(
        "",
        "origins whose web pages may call --web-listen (CORS), comma-separated, e.g."
        " http://localhost:5173; * allows any; empty: none but the server's own",
    )
    follow: str = option(
        "",
        "follow the store at this address (host:port, unix:///path or a socket path): copy"
        " its objects and events here and refuse writes (docs/replication.md); empty: a"
        " primary",
    )
    follow_token_file: str = option("", "file holding the token to present to --follow")
    follow_tls_ca: str = option(
        "", "PEM CA certificates: reach --follow over TLS, verifying its certificate"
    )
    follow_tls_server_name: str = option(
        "", "the name --follow's certificate is checked against (default: its host)"
    )
    follow_tls_cert: str = option(
        "", "PEM client certificate for --follow's mutual TLS, with --follow-tls-key"
    )
    follow_tls_key: str = option("", "PEM private key of --follow-tls-cert")
    resync_rate: int = option(
        256 * MiB,
        "bytes per second a follower copies when it resyncs from a snapshot of --follow;"
        " 0: no bound",
        parse=parse_size,
    )
    log_format: str = option(
        "text", "text lines, or one JSON object per line", choices=("text", "json")
    )
    log_level: str = option(
        "INFO", "logging threshold", parse=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )

    # Not options: message and inline sizes the clients assume too, and the stop grace period.
    max_message_size: int = MAX_MESSAGE_SIZE
    max_response_size: int = MAX_RESPONSE_SIZE
    inline_limit: int = INLINE_LIMIT
    shm_min_size: int = 64 << 10
    shutdown_grace: float = 5.0
    # Read from token_file and follow_token_file when the config is built; never printed.
    token: str = field(default="", init=False, repr=False, compare=False)
    follow_token: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.durability not in DURABILITY_MODES:
            raise ValueError(
                f"durability must be one of {DURABILITY_MODES}, not {self.durability!r}"
            )
        if not self.socket and not self.listen:
            raise ValueError("nothing to listen on: give --socket or --listen")
        if self.inline_limit + MiB > self.max_message_size:
            raise ValueError("inline_limit must leave 1 MiB of headroom below max_message_size")
        if self.commit_interval <= 0 or self.log_apply_interval <= 0:
            raise ValueError("commit_interval and log_apply_interval must be positive")
        if self.wal_size < 0:
            raise ValueError("wal_size must be 0 (off) or positive")
        if self.expire_after < 0 or self.max_stored_bytes < 0:
            raise ValueError("expire_after and max_stored_bytes must be 0 (off) or positive")
        if self.event_retention < 1 or self.subscriber_buffer < 1:
            raise ValueError("event_retention and subscriber_buffer must be at least 1")
        slots = self.index_slots
        if slots and (slots < 16 or slots & (slots - 1)):
            raise ValueError("index_slots must be 0 (off) or a power of two of at least 16")
        if not 0 <= self.socket_mode <= 0o777:
            raise ValueError(f"socket_mode must be a permission mode, not {self.socket_mode:o}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.token_file:
            object.__setattr__(self, "token", load_token(self.token_file))
        if self.follow_token_file:
            object.__setattr__(self, "follow_token", load_token(self.follow_token_file))
        if bool(self.follow_tls_cert) != bool(self.follow_tls_key):
            raise ValueError("--follow-tls-cert needs --follow-tls-key")
        if self.resync_rate < 0:
            raise ValueError("resync_rate must be 0 (no bound) or positive")
        if self.open_to_network() and not self.insecure:
            raise ValueError(
                f"refusing to listen on {self.listen} without TLS or a token: anyone who"
                " can reach it could read and change the store. Give --tls-cert/--tls-key"
                " or --token-file, or --insecure to accept that"
            )
        if self.web_open_to_network() and not self.insecure:
            raise ValueError(
                f"refusing to serve --web-listen {self.web_listen} beyond loopback without a"
                " token: anyone who can reach it could read and change the store. Give"
                " --token-file, or --insecure to accept that"
            )
        for limit in ("max_name_length", "max_batch_size", "max_subscribers", "max_streams"):
            if getattr(self, limit) < 1:
                raise ValueError(f"{limit} must be at least 1")
        if self.max_subscribers + self.max_streams >= self.max_workers:
            raise ValueError(
                "max_subscribers + max_streams must be below max_workers: every open stream"
                " holds a server thread, and unary calls need some left"
            )

    def open_to_network(self) -> bool:
        """Whether TCP is bound beyond loopback with neither TLS nor a token."""
        return (
            bool(self.listen)
            and not is_loopback(self.listen)
            and not self.tls_cert
            and not self.token
        )

    def web_open_to_network(self) -> bool:
        """Whether the Connect listener is bound beyond loopback without a token (it has no
        TLS, so TLS does not count)."""
        return bool(self.web_listen) and not is_loopback(self.web_listen) and not self.token


# Parsers by annotation (a string: this module postpones annotations).
_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": parse_flag,
}


def options() -> list[tuple[Field[Any], Option]]:
    """The server options, in declaration order, each with its ServerConfig field."""
    found = []
    for each in fields(ServerConfig):
        if "option" in each.metadata:
            opt: Option = each.metadata["option"]
            if opt.parse is None:
                opt = replace(opt, parse=_PARSERS[str(each.type)])
            found.append((each, opt))
    return found


def flag_name(name: str) -> str:
    """``wal_size`` -> ``--wal-size``."""
    return "--" + name.replace("_", "-")


def variable_name(name: str) -> str:
    """``wal_size`` -> ``IMPROV_STORE_WAL_SIZE``."""
    return ENV_PREFIX + name.upper()


def shown_default(config_field: Field[Any], opt: Option) -> str:
    """The default as a person would type it (``32M``, ``0600``, ``on``), or ``off``."""
    value: Any = config_field.default
    if opt.shown:
        return opt.shown
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "":
        return "off"
    if opt.parse is parse_size:
        return format_size(value)
    if opt.parse is parse_mode:
        return f"{value:04o}"
    return str(value)


def add_arguments(parser: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
    """Add a flag for each option (or the named ones) that defaults to its variable.

    The precedence is flag > variable > built-in default. A variable's text is
    a string default, which argparse converts and checks with the flag's own
    type, so a bad value is reported as a bad flag value would be.
    """
    wanted = set(names) if names is not None else None
    for config_field, opt in options():
        if wanted is not None and config_field.name not in wanted:
            continue
        variable = variable_name(config_field.name)
        help_text = f"{opt.help} ({variable}; default {shown_default(config_field, opt)})"
        extra: dict[str, Any] = {}
        if opt.parse is parse_flag:
            extra = {"nargs": "?", "const": True}  # a bare --insecure means yes
        if opt.parse is parse_on_off:
            extra["metavar"] = "{on,off}"
        if opt.choices:
            extra["metavar"] = "{" + ",".join(opt.choices) + "}"
        parser.add_argument(
            flag_name(config_field.name),
            type=opt.convert,
            default=os.environ.get(variable, config_field.default),
            help=help_text.replace("%", "%%"),
            **extra,
        )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Build a ServerConfig from arguments parsed by a parser ``add_arguments`` filled."""
    return ServerConfig(**{each.name: getattr(args, each.name) for each, _ in options()})


# -- documentation ---------------------------------------------------------------------------

TABLE_START = "<!-- options: generated from service/config.py; do not edit by hand -->"
TABLE_END = "<!-- options end -->"
REGENERATE = "python -m improv_store.service.config --update docs/configuration.md"


def markdown_table() -> str:
    """The documentation's option table: flag, variable, default and meaning of each option."""
    rows = ["| flag | variable | default | meaning |", "| --- | --- | --- | --- |"]
    for config_field, opt in options():
        default = shown_default(config_field, opt)
        if default != "off" and not opt.shown:
            default = f"`{default}`"
        meaning = re.sub(r"[|<>]", lambda match: "\\" + match.group(), opt.help)
        if opt.choices:
            meaning += "; one of " + ", ".join(f"`{choice}`" for choice in opt.choices)
        rows.append(
            f"| `{flag_name(config_field.name)}` | `{variable_name(config_field.name)}`"
            f" | {default} | {meaning} |"
        )
    return "\n".join(rows) + "\n"


def with_table(document: str) -> str:
    """``document`` with the text between the table markers replaced by ``markdown_table()``."""
    start = document.index(TABLE_START) + len(TABLE_START)
    end = document.index(TABLE_END, start)
    return document[:start] + "\n" + markdown_table() + document[end:]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the option table, or rewrite it inside a document (``--update PATH``)."""
    parser = argparse.ArgumentParser(
        prog="python -m improv_store.service.config", description=main.__doc__
    )
    parser.add_argument("--update", metavar="PATH", help="rewrite the table between the markers")
    args = parser.parse_args(argv)
    if args.update is None:
        sys.stdout.write(markdown_table())
        return 0
    with open(args.update) as handle:
        document = handle.read()
    with open(args.update, "w") as handle:
        handle.write(with_table(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
