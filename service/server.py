"""Run a store behind a gRPC server with health checking and reflection."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from improv_store import __version__
from improv_store.client.tuning import keep_freed_memory
from improv_store.protocol import SERVICE_NAME

from . import reflection
from .access import TokenInterceptor, is_loopback, server_credentials
from .config import ServerConfig
from .handlers import Handlers
from .lane import LaneServer
from .metrics import StoreMetrics
from .reaper import Reaper
from .replication import Follower
from .servicer import add_to_server
from .store import Store
from .web import WebServer

log = logging.getLogger(__name__)

_STOP_SLACK = 5.0  # seconds to wait for gRPC's own shutdown after the grace period
_SIGNAL_POLL = 0.2  # seconds between the main thread's checks for a stop signal
_SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the GIL while another waits


class StoreServer:
    """A Store plus the gRPC server exposing it; start(), then stop() once."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        if config.socket:
            _clear_stale_socket(config.socket)
        self.metrics = StoreMetrics()
        self.store = Store(config, observe_commit=self.metrics.observe_commit)
        try:
            self.follower = Follower(self.store, config) if config.follow else None
        except Exception:  # e.g. a --follow-tls-* file it cannot read
            self.store.close()
            raise
        self.metrics.watch(self.store.info, self.store.subscriber_lag,
                           self.follower.status if self.follower else None)
        # A follower's objects are deleted when its primary's are (docs/replication.md).
        self.reaper: Reaper | None = None
        if (config.expire_after or config.max_stored_bytes) and not config.follow:
            self.reaper = Reaper(self.store, expire_after=config.expire_after,
                                 max_stored_bytes=config.max_stored_bytes)
        options = [
            ("grpc.max_receive_message_length", config.max_message_size),
            # Every response fits a client's default receive limit; a larger one is a bug.
            ("grpc.max_send_message_length", config.max_response_size),
            ("grpc.so_reuseport", 0),
            ("grpc.http2.max_frame_size", 16777215),
        ]
        # Metrics first, so that calls the token check refuses are counted too.
        interceptors = [self.metrics.interceptor()]
        if config.token:
            interceptors.append(TokenInterceptor(config.token))
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc"),
            options=options,
            interceptors=interceptors,
        )
        lane_path = ""
        if config.socket and config.lane:
            lane_path = os.path.abspath(config.socket) + ".lane"
        handlers = Handlers(self.store, stats=self.metrics.stats, lane_socket=lane_path,
                            follower=self.follower)
        add_to_server(handlers, self._grpc)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable(self._grpc, (SERVICE_NAME, health.SERVICE_NAME))
        self.addresses: list[str] = []
        self.lane: LaneServer | None = None
        self.web: WebServer | None = None
        try:
            if config.socket:
                self._bind("unix:" + os.path.abspath(config.socket))
                # The file exists once bound; nobody can connect before start().
                os.chmod(config.socket, config.socket_mode)
            if config.listen:
                self._bind_tcp(config)
            if config.web_listen:
                self.web = self._bind_web(config, handlers)
            if lane_path:
                self.lane = LaneServer(lane_path, handlers, self.metrics.record)
                self.addresses.append(f"lane:{lane_path}")
        except Exception:
            self.store.close()
            raise

    def _bind_tcp(self, config: ServerConfig) -> None:
        credentials = None
        if config.tls_cert:
            credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
        if config.open_to_network():
            log.warning(
                "--insecure: listening on %s without TLS or a token; anyone who can reach"
                " it can read and change the store",
                config.listen,
            )
        self._bind(config.listen, credentials)

    def _bind_web(self, config: ServerConfig, handlers: Handlers) -> WebServer:
        """The Connect listener for browsers and curl (service/web.py), bound, not started."""
        if config.web_open_to_network():
            log.warning(
                "--insecure: serving Connect on %s without a token; anyone who can reach it"
                " can read and change the store",
                config.web_listen,
            )
        elif not is_loopback(config.web_listen):
            log.warning(
                "serving Connect on %s without TLS: the token crosses the network in the"
                " clear; put a TLS-terminating proxy in front (docs/browser.md)",
                config.web_listen,
            )
        web = WebServer(
            config.web_listen,
            handlers,
            token=config.token,
            allow_origin=config.web_allow_origin,
            max_body=config.max_message_size,
            record=self.metrics.record,
        )
        self.addresses.append(f"http://{web.address} (Connect)")
        return web

    def _bind(self, address: str, credentials: grpc.ServerCredentials | None = None) -> None:
        try:
            if credentials is None:
                port = self._grpc.add_insecure_port(address)
            else:
                port = self._grpc.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen on {address}: {exc}") from None
        if port == 0:
            raise RuntimeError(f"cannot listen on {address}")
        self.addresses.append(address)

    def start(self) -> None:
        self._grpc.start()
        if self.lane is not None:
            self.lane.start()
        if self.web is not None:
            self.web.start()
        if self.reaper is not None:
            self.reaper.start()
        if self.follower is not None:
            self.follower.start()
        if self.config.metrics_listen:
            self.metrics.serve(self.config.metrics_listen)
            self.addresses.append(f"http://{self.config.metrics_listen}/metrics")
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "improv-store %s serving on %s (durability %s, data %s, access %s)",
            __version__,
            ", ".join(self.addresses),
            self.config.durability,
            os.path.abspath(self.config.data_dir) if self.config.durability != "none" else "-",
            _access_summary(self.config),
        )

    def stop(self) -> None:
        """Stop accepting, let in-flight calls finish, flush to disk, remove the socket."""
        log.info("shutting down")
        self._health.enter_graceful_shutdown()
        if self.lane is not None:
            self.lane.stop()
        if self.reaper is not None:
            self.reaper.stop()
        if self.follower is not None:
            self.follower.stop()
        self.store.begin_shutdown()
        if self.web is not None:
            self.web.close()  # after the store's shutdown began: subscribers hear UNAVAILABLE
        grace = self.config.shutdown_grace
        if not self._grpc.stop(grace).wait(grace + _STOP_SLACK):
            log.warning("gRPC did not finish stopping %.0f s after the grace period", _STOP_SLACK)
        if self.web is not None and not self.web.wait(_STOP_SLACK):
            log.warning("Connect calls were still running %.0f s after gRPC stopped", _STOP_SLACK)
        self.store.close()
        if self.config.socket:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.socket)
        log.info("stopped")


def _access_summary(config: ServerConfig) -> str:
    """How callers are checked, for the start-up line: e.g. ``token, mutual TLS on TCP``."""
    parts = ["token" if config.token else "no token"]
    if config.tls_client_ca:
        parts.append("mutual TLS on TCP")
    elif config.tls_cert:
        parts.append("TLS on TCP")
    return ", ".join(parts)


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse to steal a live one."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    except OSError as exc:
        raise RuntimeError(f"{path} exists and is not a usable socket: {exc}") from None
    finally:
        probe.close()
    raise RuntimeError(f"another server is already listening on {path}")


def hand_over_the_gil_sooner() -> None:
    """Let a thread that wants the GIL wait at most 0.5 ms instead of Python's 5 ms.

    A lane call is a few tens of microseconds of Python; when the committer
    (serializing a batch for LMDB) or a gRPC stream holds the GIL, the call
    would wait up to a whole switch interval, which sets the tail latency.
    """
    sys.setswitchinterval(_SWITCH_INTERVAL)


def spare_the_collector_what_startup_made() -> None:
    """Take everything made so far, the objects recovered from disk above all, out of
    the garbage collector's full collections.

    They live as long as the server, and a full collection walks every tracked
    object while holding the GIL, during which no call is answered. Frozen
    objects are still freed by reference counting when they go; only a
    reference cycle among them would outlive its use, and the store's records
    form none.
    """
    gc.freeze()


def keep_full_collections_short() -> None:
    """After each full garbage collection, take what survived out of the later ones.

    Stored objects live long, and a full collection walks every tracked
    object while holding the GIL, so full collections grow with the store.
    Frozen after the collection that found them alive, the next one walks
    only what came since. What is frozen is still freed by reference
    counting; only a reference cycle that outlived a full collection would
    never be reclaimed, and the server's cycles die young (after a mixed
    workload on both transports and every durability, unfreezing everything
    and collecting finds no garbage).
    """

    def freeze_survivors(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            gc.freeze()

    gc.callbacks.append(freeze_survivors)


def run(config: ServerConfig) -> int:
    """Serve until SIGTERM or SIGINT, then shut down cleanly; return the exit code."""
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    keep_freed_memory()
    hand_over_the_gil_sooner()
    try:
        server = StoreServer(config)
    except (RuntimeError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    spare_the_collector_what_startup_made()
    keep_full_collections_short()
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    exit_code = 0
    try:
        server.start()
        # A timed wait: the kernel may hand SIGTERM to any thread, and Python runs the
        # handler only when the main thread wakes, which an untimed wait never does.
        while not stop_requested.wait(_SIGNAL_POLL):
            pass
    except OSError as exc:  # e.g. the metrics port is taken
        log.error("cannot start: %s", exc)
        exit_code = 1
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_code
