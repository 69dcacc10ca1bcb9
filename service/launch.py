"""Start a store server from Python, the way improv's nexus started ``plasma_store``.

    from improv_store.service import launch
    with launch("/tmp/store", size=10_000_000) as server:
        ...   # actors connect with PlasmaStoreInterface(store_loc="/tmp/store")
"""

from __future__ import annotations

import os
import signal
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
    half of free /dev/shm). Data goes to ``data_dir`` (default
    ``<store_loc>.data``). No TCP listener is opened. The server's log is
    appended to ``log_path`` (default: an anonymous temporary file). Raises
    RuntimeError, with the server's own message, if it does not come up.
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
    # would block the server.
    with open(log_path, "ab") if log_path else tempfile.TemporaryFile() as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            address = "unix:" + os.path.abspath(store_loc)
            wait_until_serving(process, address, timeout, lambda: _tail(log_file))
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

    Raises RuntimeError with ``output()`` (what the server wrote) if the
    process exits first, or when ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"improv-store exited with {process.returncode}: {output()}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"improv-store did not answer on {address} within {timeout} s: {output()}")


def _tail(log_file: BinaryIO, limit: int = 4000) -> str:
    """The end of what the server wrote, for an error message."""
    log_file.flush()
    log_file.seek(0, os.SEEK_END)
    log_file.seek(max(0, log_file.tell() - limit))
    return log_file.read().decode(errors="replace").strip()
