"""Start a store server from Python, the way improv's nexus started ``plasma_store``.

    from improv_store.service import launch
    with launch("/tmp/store", size=10_000_000) as server:
        ...   # actors connect with PlasmaStoreInterface(store_loc="/tmp/store")
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import TracebackType
from typing import BinaryIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Seconds to wait for SERVING: start-up includes recovering the LMDB data and replaying the log.
START_TIMEOUT = 30.0


class StoreProcess:
    """A running ``improv-store serve`` child process; a context manager that stops it."""

    def __init__(self, process: subprocess.Popen, store_loc: str, data_dir: str) -> None:
        self.process = process
        self.store_loc = store_loc
        self.data_dir = data_dir

    @property
    def pid(self) -> int:
        """The server's process ID, to signal it directly (e.g. SIGKILL in a crash test)."""
        return self.process.pid

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait: the server flushes and removes its socket. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def __enter__(self) -> StoreProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def launch(
    store_loc: str = "/tmp/store",
    size: int | None = None,
    *,
    data_dir: str | None = None,
    durability: str = "async",
    extra_args: tuple[str, ...] = (),
    log_path: str | None = None,
    timeout: float = START_TIMEOUT,
) -> StoreProcess:
    """Start a server on the unix socket ``store_loc`` and wait until it is SERVING.

    ``size`` is the shared memory in bytes (plasma_store's ``-m``; default:
    half of free /dev/shm; less than 4 MiB is rounded up). Data goes to
    ``data_dir`` (default ``<store_loc>.data``). No TCP listener is opened.
    The server's log is appended to ``log_path`` (default: an anonymous
    temporary file). Raises RuntimeError, quoting what the server logged, if
    it does not come up, or if another server is serving at ``store_loc``.
    """
    data_dir = data_dir or f"{store_loc}.data"
    command = [
        sys.executable, "-m", "improv_store.service",
        "--socket", store_loc, "--listen", "",
        "--data-dir", data_dir, "--durability", durability,
    ]
    if size is not None:
        command += ["--memory", str(int(size))]
    command += list(extra_args)
    # A file, not a pipe: nobody reads the log after start-up, and a full pipe
    # would block the server. Readable too ("a+b"): a failed start quotes it.
    with open(log_path, "a+b") if log_path else tempfile.TemporaryFile() as log_file:
        this_run = os.fstat(log_file.fileno()).st_size  # where this server's lines begin
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            address = "unix:" + os.path.abspath(store_loc)
            wait_until_serving(process, address, timeout, lambda: _tail(log_file, this_run))
        except BaseException:
            if process.poll() is None:
                process.kill()
            process.wait()
            raise
    return StoreProcess(process, store_loc, data_dir)


def wait_until_serving(
    process: subprocess.Popen, address: str, timeout: float, output: Callable[[], str]
) -> None:
    """Poll the standard health service at ``address`` until SERVING.

    On a unix socket the server that answers must be ``process`` itself: an
    older server still holding the socket answers health checks too, while
    the new process fails to bind. Raises RuntimeError with ``output()``
    (what the server wrote) if the process exits first, if another process
    serves the socket, or when ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    unix_path = address.removeprefix("unix://").removeprefix("unix:")
    if unix_path == address:
        unix_path = ""  # TCP: no listener PID to ask the kernel for
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"improv-store exited with {process.returncode}: {output()}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                reply = None
            if reply is not None and reply.status == health_pb2.HealthCheckResponse.SERVING:
                server = serving_pid(unix_path) if unix_path else process.pid
                if server is not None and _descends_from(server, process.pid):
                    return
                if server is not None:
                    raise RuntimeError(
                        f"another improv-store server (pid {server}) is serving at"
                        f" {unix_path}; stop it or choose another socket"
                    )
            time.sleep(0.05)
    raise RuntimeError(f"improv-store did not answer on {address} within {timeout} s: {output()}")


def serving_pid(socket_path: str) -> int | None:
    """The ID of the process listening on the unix socket, or None if nothing listens.

    The kernel records the listener's credentials (SO_PEERCRED), so this
    names the server without asking it anything.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(socket_path)
        except OSError:
            return None
        credentials = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, _uid, _gid = _UCRED.unpack(credentials)
    return int(pid)


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether ``pid`` is ``ancestor`` or its descendant (a wrapper may fork the server)."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                # pid (comm) state ppid ...: comm may hold spaces and parentheses.
                pid = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def _tail(log_file: BinaryIO, this_run: int, limit: int = 4000) -> str:
    """The end of what the server wrote after offset ``this_run``, for an error message.

    A positional read: the server may share the file's offset (an anonymous
    temporary file is not opened for appending), so it must not move.
    """
    end = os.fstat(log_file.fileno()).st_size
    start = max(this_run, end - limit)
    return os.pread(log_file.fileno(), end - start, start).decode(errors="replace").strip()
