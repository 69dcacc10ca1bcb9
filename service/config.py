"""Server configuration: one dataclass, filled from flags or IMPROV_STORE_* variables."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from .access import is_loopback, load_token

DURABILITY_MODES = ("sync", "async", "none")

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class ServerConfig:
    """Everything a server needs to start; defaults suit one improv rig."""

    socket: str = "/tmp/improv-store.sock"
    listen: str = "127.0.0.1:50051"
    data_dir: str = "./improv-store-data"
    durability: str = "async"
    commit_interval: float = 0.1
    log_apply_interval: float = 1.0
    wal_size: int = 32 * MiB
    max_object_size: int = 2 * GiB
    inline_limit: int = 4 * MiB
    max_message_size: int = 32 * MiB
    max_name_length: int = 256
    max_batch_size: int = 1024
    event_retention: int = 100_000
    subscriber_buffer: int = 10_000
    max_subscribers: int = 64
    max_streams: int = 48
    max_workers: int = 128
    initial_map_size: int = 1 * GiB
    memory: int | None = None
    metrics_listen: str = ""
    lane: bool = True
    log_format: str = "text"
    shm_min_size: int = 64 << 10
    index_slots: int = 1 << 16
    shutdown_grace: float = 5.0
    log_level: str = "INFO"
    socket_mode: int = 0o600
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    token_file: str = ""
    insecure: bool = False
    # Read from token_file when the config is built; never printed.
    token: str = field(default="", init=False, repr=False, compare=False)

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
        if self.open_to_network() and not self.insecure:
            raise ValueError(
                f"refusing to listen on {self.listen} without TLS or a token: anyone who"
                " can reach it could read and change the store. Give --tls-cert/--tls-key"
                " or --token-file, or --insecure to accept that"
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


def parse_size(text: str) -> int:
    """Parse a byte count such as ``512``, ``64M``, ``2GiB`` or ``1.5g``."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    number = cleaned.rstrip("kmgt")
    unit = cleaned[len(number) :]
    if unit not in units or not number:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512, 64M, 2G)")
    try:
        return int(float(number) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512, 64M, 2G)") from None


def parse_mode(text: str) -> int:
    """Parse an octal permission mode such as ``0600`` or ``660``."""
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r} (use e.g. 0600)") from None


def parse_flag(text: str) -> bool:
    """An IMPROV_STORE_* boolean: 1/true/yes/on, or 0/false/no/off/empty."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r} (use 1 or 0)")


def _env(name: str, default: object) -> object:
    """The IMPROV_STORE_<NAME> variable if set, else the default."""
    return os.environ.get("IMPROV_STORE_" + name.upper(), default)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per ServerConfig field; each defaults to its environment variable."""
    d = ServerConfig()
    add = parser.add_argument
    add(
        "--socket",
        default=_env("socket", d.socket),
        help="unix socket path; empty to disable (IMPROV_STORE_SOCKET)",
    )
    add(
        "--socket-mode",
        type=parse_mode,
        default=_env("socket_mode", f"{d.socket_mode:04o}"),
        help="permissions of the unix socket, in octal (IMPROV_STORE_SOCKET_MODE)",
    )
    add(
        "--listen",
        default=_env("listen", d.listen),
        help="TCP host:port; empty to disable (IMPROV_STORE_LISTEN)",
    )
    add(
        "--tls-cert",
        default=_env("tls_cert", d.tls_cert),
        help="PEM certificate (chain) for TLS on the TCP listener (IMPROV_STORE_TLS_CERT)",
    )
    add(
        "--tls-key",
        default=_env("tls_key", d.tls_key),
        help="PEM private key of --tls-cert (IMPROV_STORE_TLS_KEY)",
    )
    add(
        "--tls-client-ca",
        default=_env("tls_client_ca", d.tls_client_ca),
        help="PEM CA certificates: TCP clients must present a certificate one of them"
        " signed (mutual TLS) (IMPROV_STORE_TLS_CLIENT_CA)",
    )
    add(
        "--token-file",
        default=_env("token_file", d.token_file),
        help="file holding a token every RPC must carry as 'authorization: Bearer <token>',"
        " on TCP and the unix socket; health checks stay open (IMPROV_STORE_TOKEN_FILE)",
    )
    add(
        "--insecure",
        nargs="?",
        const=True,
        type=parse_flag,
        default=_env("insecure", "0"),
        help="allow TCP beyond loopback without TLS or a token (IMPROV_STORE_INSECURE=1)",
    )
    add(
        "--data-dir",
        default=_env("data_dir", d.data_dir),
        help="LMDB directory (IMPROV_STORE_DATA_DIR)",
    )
    add(
        "--durability",
        choices=DURABILITY_MODES,
        default=_env("durability", d.durability),
        help="sync: fsync before replying; async: commit every interval; none: memory only"
        " (IMPROV_STORE_DURABILITY)",
    )
    add(
        "--commit-interval",
        type=float,
        default=_env("commit_interval", d.commit_interval),
        help="seconds between background commits in async mode (IMPROV_STORE_COMMIT_INTERVAL)",
    )
    add(
        "--log-apply-interval",
        type=float,
        default=_env("log_apply_interval", d.log_apply_interval),
        help="sync mode: seconds between applying the write-ahead log to LMDB, which is"
        " also applied when a quarter of it is written (IMPROV_STORE_LOG_APPLY_INTERVAL)",
    )
    add(
        "--wal-size",
        type=parse_size,
        default=_env("wal_size", d.wal_size),
        help="sync mode: size of the preallocated write-ahead log that makes small writes"
        " durable with one fsync; 0: commit each batch to LMDB instead (IMPROV_STORE_WAL_SIZE)",
    )
    add(
        "--max-object-size",
        type=parse_size,
        default=_env("max_object_size", d.max_object_size),
        help="largest payload accepted, e.g. 2G (IMPROV_STORE_MAX_OBJECT_SIZE)",
    )
    add(
        "--max-name-length",
        type=int,
        default=_env("max_name_length", d.max_name_length),
        help="longest object name (and List/Subscribe prefix) in UTF-8 bytes; longer is"
        " INVALID_ARGUMENT (IMPROV_STORE_MAX_NAME_LENGTH)",
    )
    add(
        "--max-batch-size",
        type=int,
        default=_env("max_batch_size", d.max_batch_size),
        help="most refs in a BatchGet or items in a BatchPut; more is INVALID_ARGUMENT"
        " (IMPROV_STORE_MAX_BATCH_SIZE)",
    )
    add(
        "--event-retention",
        type=int,
        default=_env("event_retention", d.event_retention),
        help="events kept for Subscribe replay (IMPROV_STORE_EVENT_RETENTION)",
    )
    add(
        "--subscriber-buffer",
        type=int,
        default=_env("subscriber_buffer", d.subscriber_buffer),
        help="events buffered per subscriber before it is cut off (IMPROV_STORE_SUBSCRIBER_BUFFER)",
    )
    add(
        "--max-subscribers",
        type=int,
        default=_env("max_subscribers", d.max_subscribers),
        help="concurrent Subscribe streams; more is RESOURCE_EXHAUSTED"
        " (IMPROV_STORE_MAX_SUBSCRIBERS)",
    )
    add(
        "--max-streams",
        type=int,
        default=_env("max_streams", d.max_streams),
        help="concurrent PutStream, GetStream and Session streams; more is RESOURCE_EXHAUSTED"
        " (IMPROV_STORE_MAX_STREAMS)",
    )
    add(
        "--max-workers",
        type=int,
        default=_env("max_workers", d.max_workers),
        help="server threads; each open stream holds one (IMPROV_STORE_MAX_WORKERS)",
    )
    add(
        "--initial-map-size",
        type=parse_size,
        default=_env("initial_map_size", d.initial_map_size),
        help="starting LMDB map size; it grows on demand (IMPROV_STORE_INITIAL_MAP_SIZE)",
    )
    add(
        "--memory",
        type=parse_size,
        default=_env("memory", None),
        help="shared memory for objects, e.g. 4G; default half of free /dev/shm"
        " (IMPROV_STORE_MEMORY)",
    )
    add(
        "--lane",
        choices=("on", "off"),
        default=_env("lane", "on"),
        help="the local lane: a plain unix socket beside --socket (path + '.lane') that"
        " colocated clients use for fast calls (IMPROV_STORE_LANE)",
    )
    add(
        "--index-slots",
        type=int,
        default=_env("index_slots", d.index_slots),
        help="slots of the shared-memory object index that colocated clients read small"
        " objects from without a call (a power of two; 0: off) (IMPROV_STORE_INDEX_SLOTS)",
    )
    add(
        "--metrics-listen",
        default=_env("metrics_listen", d.metrics_listen),
        help="host:port to serve Prometheus /metrics on; empty: off"
        " (IMPROV_STORE_METRICS_LISTEN)",
    )
    add(
        "--log-format",
        choices=("text", "json"),
        default=_env("log_format", d.log_format),
        help="text lines, or one JSON object per line (IMPROV_STORE_LOG_FORMAT)",
    )
    add(
        "--log-level",
        default=_env("log_level", d.log_level),
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        help="logging threshold (IMPROV_STORE_LOG_LEVEL)",
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Build a ServerConfig from parsed ``serve`` arguments.

    argparse applies each flag's type to a string default too, so values that
    came from the environment arrive converted.
    """
    return ServerConfig(
        socket=args.socket,
        socket_mode=args.socket_mode,
        listen=args.listen,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        token_file=args.token_file,
        insecure=args.insecure,
        data_dir=args.data_dir,
        durability=args.durability,
        commit_interval=float(args.commit_interval),
        log_apply_interval=float(args.log_apply_interval),
        wal_size=args.wal_size,
        max_object_size=args.max_object_size,
        max_name_length=int(args.max_name_length),
        max_batch_size=int(args.max_batch_size),
        event_retention=int(args.event_retention),
        subscriber_buffer=int(args.subscriber_buffer),
        max_subscribers=int(args.max_subscribers),
        max_streams=int(args.max_streams),
        max_workers=int(args.max_workers),
        initial_map_size=args.initial_map_size,
        memory=args.memory,
        metrics_listen=args.metrics_listen,
        lane=args.lane == "on",
        index_slots=int(args.index_slots),
        log_format=args.log_format,
        log_level=args.log_level,
    )
