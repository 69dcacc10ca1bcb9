"""The server process: configuration from flags and environment, start-up checks, clean stop."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port, wait_serving

from improv_store.client import StoreClient, StoreError, StoreUnavailable


def test_configuration_from_environment(tmp_path: Path, start_server: Any) -> None:
    """IMPROV_STORE_* variables configure a server started with no flags."""
    socket_path = f"/tmp/is-env-{os.getpid()}.sock"
    env = {
        **os.environ,
        "IMPROV_STORE_SOCKET": socket_path,
        "IMPROV_STORE_LISTEN": f"127.0.0.1:{free_port()}",
        "IMPROV_STORE_DATA_DIR": str(tmp_path / "env-data"),
        "IMPROV_STORE_DURABILITY": "sync",
        "IMPROV_STORE_MAX_OBJECT_SIZE": "1M",
    }
    log_path = tmp_path / "env.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "improv_store.service"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_serving("unix://" + socket_path, process, log_path)
        with StoreClient(socket_path) as store:
            info = store.info()
            assert (info.durability, info.max_object_size) == ("sync", 1 << 20)
            store.put(b"x")
        assert (tmp_path / "env-data" / "data.mdb").exists()
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert not os.path.exists(socket_path)


def test_stale_socket_is_replaced_but_a_live_one_is_not(tmp_path: Path) -> None:
    """A socket file left by a dead server is cleared; a live server's socket is never stolen."""
    stale = f"/tmp/is-stale-{os.getpid()}.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(stale)
    dead.close()
    command = [sys.executable, "-m", "improv_store.service", "--socket", stale, "--listen", ""]
    log_path = tmp_path / "first.log"
    with open(log_path, "wb") as log:
        first = subprocess.Popen(
            [*command, "--data-dir", str(tmp_path / "first")], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_serving("unix://" + stale, first, log_path)
        with StoreClient(stale) as store:
            store.put(b"ok")
        second = subprocess.run(
            [*command, "--data-dir", str(tmp_path / "second")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "already listening" in second.stderr
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
    assert not os.path.exists(stale)


def test_one_server_per_data_directory(start_server: Any) -> None:
    """A second server on the same data directory refuses to start, saying why."""
    server = start_server(durability="sync")
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "improv_store.service",
            "--socket",
            "",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--data-dir",
            server.data_dir,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "another improv-store server is using the data directory" in second.stderr


def test_bad_configuration_exits_with_a_message(tmp_path: Path) -> None:
    """An unusable flag value is a usage error, not a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "improv_store.service", "--max-object-size", "lots"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "not a size" in result.stderr


def test_sigterm_finishes_in_flight_work(start_server: Any) -> None:
    """SIGTERM during a sync write storm: exit 0, waiters released, acknowledged puts kept."""
    server = start_server(durability="sync")
    acknowledged: list[Any] = []
    waiter_error: list[BaseException] = []
    stop_writing = threading.Event()

    def write() -> None:
        with server.client() as store:
            while not stop_writing.is_set():
                try:
                    acknowledged.append(store.put(np.zeros(4096)))
                except StoreError:
                    return

    def wait_forever() -> None:
        with server.client() as store:
            try:
                store.get("never-put", timeout=60)
            except StoreError as exc:
                waiter_error.append(exc)

    threads = [threading.Thread(target=write) for _ in range(3)]
    threads.append(threading.Thread(target=wait_forever))
    for thread in threads:
        thread.start()
    while len(acknowledged) < 100:
        threading.Event().wait(0.01)
    assert server.stop(timeout=30) == 0
    stop_writing.set()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    assert waiter_error and isinstance(waiter_error[0], StoreUnavailable)

    restarted = start_server(durability="sync", data_dir=server.data_dir)
    with restarted.client() as store:
        stored = {info.id for info in store.list()}
    assert set(acknowledged) <= stored


def test_defaults_with_no_flags(tmp_path: Path) -> None:
    """`improv-store serve` alone: /tmp/improv-store.sock, 127.0.0.1:50051, ./improv-store-data."""
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", 50051))
    except OSError:
        pytest.skip("port 50051 is in use on this machine")
    finally:
        probe.close()
    if os.path.exists("/tmp/improv-store.sock"):
        pytest.skip("/tmp/improv-store.sock exists: another store may be running")
    cli = os.path.join(os.path.dirname(sys.executable), "improv-store")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMPROV_STORE_")}
    log_path = tmp_path / "default.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [cli, "serve"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_serving("unix:///tmp/improv-store.sock", process, log_path)
        with StoreClient("127.0.0.1:50051") as store:
            assert store.info().durability == "async"
        assert (tmp_path / "improv-store-data" / "data.mdb").exists()
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0


def test_full_collections_leave_what_survived_them_frozen() -> None:
    """What is alive at a full garbage collection is out of the later ones, so they walk
    only what came since; reference counting still frees it. In a process of its own:
    the policy is the server's, not the test runner's."""
    code = """
import gc, weakref
from improv_store.service.server import keep_full_collections_short
keep_full_collections_short()
class Record: pass
kept = [Record() for _ in range(1000)]
before = gc.get_freeze_count()
gc.collect()
assert gc.get_freeze_count() >= before + 1000, (before, gc.get_freeze_count())
probe = weakref.ref(kept[0])
del kept
assert probe() is None
print("frozen and freed")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "frozen and freed"
