"""Start the stores' servers on temporary sockets, wait until they answer, stop them by PID.

Each start registers the server's stop on the caller's ExitStack, so that
everything a run started stops also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.harness import COLOCATED, IMPROV, PLASMA, REDIS
from improv_store.client import StoreClient

START_TIMEOUT = 30.0
SETUP_HINT = ("run scripts/bench-setup (installs redis-server, the [bench] extra"
              " and pyarrow 11 with Plasma in .venv-plasma)")


def free_port() -> int:
    """A loopback TCP port nobody is listening on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    """A server subprocess this bench started, with its addresses."""

    name: str
    process: subprocess.Popen[bytes]
    socket_path: str
    port: int
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)
    ready_s: float = 0.0  # from the start of the process until it answered

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM this PID and wait; SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def serving(socket_path: str) -> bool:
    """Whether the health service on ``socket_path`` says SERVING.

    A fresh channel for each probe: a channel that failed to connect waits
    (reconnect backoff, a second or more) before it tries again.
    """
    if not os.path.exists(socket_path):
        return False
    with grpc.insecure_channel("unix://" + socket_path) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=1)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _spawn(args: list[str], log_path: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Start ``args`` with its output in ``log_path``; the process and its start time."""
    with open(log_path, "wb") as log_file:
        started = time.monotonic()
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    return process, started


def _await_ready(server: Server, program: str, started: float, ready: Callable[[], bool],
                 not_ready: str, poll: float, timeout: float = START_TIMEOUT) -> Server:
    """Poll ``ready()`` until it holds (then set ``ready_s``); raise with the log's tail when
    the process exits first or ``timeout`` passes."""
    deadline = started + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{program} exited with {server.process.returncode}:\n"
                               f"{server.log_tail()}")
        if ready():
            server.ready_s = time.monotonic() - started
            return server
        time.sleep(poll)
    raise RuntimeError(f"{program} {not_ready} after {timeout} s:\n{server.log_tail()}")


def start_improv(workdir: Path, tag: str, durability: str, memory: int,
                 stack: contextlib.ExitStack, data_dir: Path | None = None,
                 poll: float = 0.05, timeout: float = START_TIMEOUT) -> Server:
    """Start ``python -m improv_store.service`` and wait until its health service says SERVING.

    ``data_dir`` (default ``<tag>-data``) may hold a previous server's data;
    ``ready_s`` of the result is the time from the start until SERVING, which
    may take ``timeout`` seconds.
    """
    socket_path = str(workdir / f"{tag}.sock")
    port = free_port()
    log_path = workdir / f"{tag}.log"
    process, started = _spawn([
        sys.executable, "-m", "improv_store.service",
        "--socket", socket_path,
        "--listen", f"127.0.0.1:{port}",
        "--data-dir", str(data_dir or workdir / f"{tag}-data"),
        "--durability", durability,
        "--memory", str(memory),
    ], log_path)
    server = Server(IMPROV, process, socket_path, port, log_path,
                    {"durability": durability, "memory": str(memory)})
    stack.callback(server.stop)
    return _await_ready(server, "improv-store", started, lambda: serving(socket_path),
                        "not SERVING", poll, timeout)


def start_redis(workdir: Path, tag: str, durable: bool, stack: contextlib.ExitStack,
                data_dir: Path | None = None, poll: float = 0.05,
                appendfsync: str = "always", timeout: float = START_TIMEOUT) -> Server:
    """Start redis-server on a free port and a unix socket; wait until it answers PING.

    ``data_dir`` (default ``<tag>-data``) may hold a previous server's
    dump.rdb (or, ``durable``, its AOF), which it then loads; ``ready_s`` is
    the time until PING (at most ``timeout`` s). ``durable``: appendonly with
    ``appendfsync``. The probe does not retry a PING refused while loading (redis-py
    would, with a backoff of up to 1 s that would round ``ready_s`` up).
    """
    import redis

    socket_path = str(workdir / f"{tag}.sock")
    data_dir = data_dir or workdir / f"{tag}-data"
    data_dir.mkdir(exist_ok=True)
    port = free_port()
    log_path = workdir / f"{tag}.log"
    args = [
        "redis-server",
        "--port", str(port), "--bind", "127.0.0.1",
        "--unixsocket", socket_path, "--unixsocketperm", "700",
        "--save", "", "--dir", str(data_dir),
        "--logfile", "",
    ]
    if durable:
        args += ["--appendonly", "yes", "--appendfsync", appendfsync]
    else:
        args += ["--appendonly", "no"]
    process, started = _spawn(args, log_path)
    server = Server(REDIS, process, socket_path, port, log_path,
                    {"appendonly": "yes" if durable else "no",
                     "appendfsync": appendfsync if durable else "n/a"})
    stack.callback(server.stop)

    def answers() -> bool:
        try:
            with redis.Redis(unix_socket_path=socket_path, socket_timeout=1,
                             retry=no_retry()) as probe:
                return bool(probe.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    return _await_ready(server, "redis-server", started, answers, "not answering", poll, timeout)


def no_retry() -> Any:
    """A redis-py retry policy that does not retry: each call fails at once."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


def plasma_store_executable(python: Path) -> Path | None:
    """The plasma store server shipped in pyarrow 11 inside the venv of ``python``."""
    venv = python.parent.parent
    candidates = sorted(venv.glob("lib/python3*/site-packages/pyarrow/plasma-store-server"))
    candidates.append(venv / "bin" / "plasma_store")  # execs the one above: same PID
    return next((path for path in candidates if path.exists()), None)


def start_plasma(workdir: Path, executable: Path, memory: int,
                 stack: contextlib.ExitStack) -> Server:
    """Start ``plasma_store -m <bytes> -s <socket>`` and wait until its socket accepts."""
    socket_path = str(workdir / "plasma.sock")
    log_path = workdir / "plasma.log"
    process, started = _spawn([str(executable), "-m", str(memory), "-s", socket_path,
                               "-d", "/dev/shm"], log_path)
    server = Server(PLASMA, process, socket_path, 0, log_path, {"memory": str(memory)})
    stack.callback(server.stop)

    def accepts() -> bool:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(socket_path)
            except OSError:
                return False
            return True

    return _await_ready(server, "plasma_store", started, accepts, "not listening", 0.05)


def improv_client(server: Server, transport: str) -> StoreClient:
    """unix / tcp: inline transfer (bytes through gRPC); colocated: transfer="auto", unix."""
    if transport == "tcp":
        return StoreClient(f"127.0.0.1:{server.port}", transfer="inline")
    transfer = "auto" if transport == COLOCATED else "inline"
    client = StoreClient("unix://" + server.socket_path, transfer=transfer)
    if transport == COLOCATED and not client.colocated:
        raise RuntimeError("improv-store does not use shared memory for this client")
    return client


def redis_client(socket_path: str, port: int, transport: str) -> Any:
    import redis

    if transport == "unix":
        return redis.Redis(unix_socket_path=socket_path)
    return redis.Redis(host="127.0.0.1", port=port)


def settle(client: StoreClient, timeout: float = 60.0) -> None:
    """Wait (untimed) until the server's background commits have caught up with its writes.

    With --durability async the server copies every put to LMDB after replying;
    waiting between cases keeps that work out of the next case's timings.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.info()
        if info.durability != "async" or info.committed_sequence >= info.last_sequence:
            return
        time.sleep(0.02)


@dataclass
class Peers:
    """An improv-store server and, when Redis is installed, a redis-server, measured in turns."""

    improv: Server
    redis: Server | None

    @property
    def stores(self) -> list[str]:
        return [IMPROV] if self.redis is None else [IMPROV, REDIS]

    def server(self, store: str) -> Server:
        server = self.improv if store == IMPROV else self.redis
        assert server is not None
        return server

    def connect(self, store: str, transport: str) -> Any:
        """A client of ``store`` on ``transport`` (see improv_client, redis_client)."""
        if store == IMPROV:
            return improv_client(self.improv, transport)
        assert self.redis is not None
        return redis_client(self.redis.socket_path, self.redis.port, transport)

    def stop(self) -> None:
        self.improv.stop()
        if self.redis is not None:
            self.redis.stop()


def redis_unavailable_reason() -> str | None:
    if shutil.which("redis-server") is None:
        return f"redis-server not found on PATH: {SETUP_HINT}"
    if importlib.util.find_spec("redis") is None:
        return f"the redis Python package is not installed: {SETUP_HINT}"
    return None


def plasma_unavailable_reason(args: argparse.Namespace) -> str | None:
    if args.no_plasma:
        return "skipped (--no-plasma)"
    if not args.plasma_python.exists():
        return f"{args.plasma_python} not found: {SETUP_HINT}"
    if plasma_store_executable(args.plasma_python) is None:
        return (f"no plasma-store-server in the venv of {args.plasma_python}"
                f" (pyarrow 11 needed): {SETUP_HINT}")
    return None
