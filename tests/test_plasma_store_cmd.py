"""The plasma_store-compatible command: Plasma's flags, the server's own PID, small sizes,
ephemeral runs, what a SIGKILL leaves and the next start clears, and the opt-in alias.

Each test points TMPDIR at its own directory, so the runs it starts and reaps are its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from improv_store.client import StoreClient
from improv_store.protocol import SHM_DIR
from improv_store.service.launch import serving_pid, wait_until_serving
from improv_store.service.locality import MIN_ARENA, store_prefix
from improv_store.service.plasma_store import PlasmaFlags, UsageError, memory_bytes, parse_flags

COMMAND = os.path.join(os.path.dirname(sys.executable), "improv-plasma-store")
START_TIMEOUT = 30.0


class Shim:
    """One ``improv-plasma-store`` process, started as improv's nexus starts plasma_store."""

    def __init__(self, tmp_path: Path, name: str, *flags: str, command: str = COMMAND) -> None:
        self.socket = str(tmp_path / name)
        self.log_path = tmp_path / f"{name}.log"
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([command, "-s", self.socket, *flags], env=env,
                                            stdout=log, stderr=subprocess.STDOUT)

    def wait_serving(self) -> Shim:
        wait_until_serving(self.process, "unix:" + self.socket, START_TIMEOUT, self.log)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.fixture
def shims(tmp_path: Path) -> Iterator[list[Shim]]:
    started: list[Shim] = []
    yield started
    for shim in started:
        if shim.process.poll() is None:
            shim.process.kill()
            shim.process.wait(10)
    reap = subprocess.run([COMMAND, "--reap"], env={**os.environ, "TMPDIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert reap.returncode == 0, reap.stderr


def start(shims: list[Shim], tmp_path: Path, name: str, *flags: str) -> Shim:
    shim = Shim(tmp_path, name, *flags)
    shims.append(shim)
    return shim.wait_serving()


def runs(tmp_path: Path) -> list[Path]:
    """The run directories of the stores started under ``tmp_path``."""
    root = tmp_path / f"improv-store-plasma-{os.getuid()}"
    return sorted(root.iterdir()) if root.exists() else []


def shm_files(run: Path) -> list[str]:
    prefix = store_prefix(str(run / "data"))
    return [name for name in os.listdir(SHM_DIR) if name.startswith(prefix)]


# -- flags, read as plasma_store's gflags read them --------------------------------------


def test_flags_in_every_spelling_plasma_took() -> None:
    assert parse_flags(["-s", "/tmp/x", "-m", "4000"]) == PlasmaFlags("/tmp/x", "4000")
    assert parse_flags(["--s=/tmp/x", "-m=10", "-e", "hashtable://test", "-d", "/dev/shm", "-h"]) \
        == PlasmaFlags("/tmp/x", "10", "hashtable://test", "/dev/shm", hugepages=True)
    assert not parse_flags(["-h=false"]).hugepages and not parse_flags(["-h", "-noh"]).hugepages
    assert parse_flags(["--help"]).help
    for bad, message in (
        (["-x"], "unknown command line flag 'x'"),
        (["-s"], "flag '-s' is missing its argument"),
        (["-h=maybe"], "illegal value 'maybe'"),
    ):
        with pytest.raises(UsageError, match=message):
            parse_flags(bad)


def test_memory_is_checked_as_plasma_checked_it() -> None:
    assert memory_bytes(PlasmaFlags(socket="/tmp/x", memory="4000")) == 4000
    with pytest.raises(UsageError, match=r"please specify socket .* with -s, and the amount"):
        memory_bytes(PlasmaFlags(socket="/tmp/x"))
    with pytest.raises(UsageError, match="no letter suffix allowed"):
        memory_bytes(PlasmaFlags(socket="/tmp/x", memory="10M"))


def test_bad_flags_exit_1_with_plasmas_message(tmp_path: Path) -> None:
    result = subprocess.run([COMMAND, "-s", str(tmp_path / "s")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("plasma_store: please specify socket")
    assert not os.path.exists(tmp_path / "s")


# -- serving ---------------------------------------------------------------------------------


def test_the_command_is_the_server_and_takes_small_sizes(shims: list[Shim], tmp_path: Path) -> None:
    """improv's nexus holds this PID and SIGKILLs it; its tests start 4,000-byte stores."""
    shim = start(shims, tmp_path, "store", "-m", "4000", "-d", "/tmp", "-h")
    assert serving_pid(shim.socket) == shim.process.pid
    with StoreClient(shim.socket) as store:
        info = store.info()
        assert (info.arena_capacity, info.durability) == (MIN_ARENA, "none")
        assert store.get(store.put(b"frame" * 100)) == b"frame" * 100
    log = shim.log()
    assert "--memory 4000 bytes is below the arena's minimum" in log
    assert "-d /tmp ignored" in log and "-h ignored" in log


def test_a_clean_stop_leaves_nothing(shims: list[Shim], tmp_path: Path) -> None:
    """Ephemeral, with -e too (objects spill to disk in the run directory)."""
    shim = start(shims, tmp_path, "store", "-m", "10000", "-e", "hashtable://test")
    (run,) = runs(tmp_path)
    with StoreClient(shim.socket) as store:
        assert store.info().durability == "async"
        store.put(b"on disk")
    assert (run / "data" / "data.mdb").exists()
    assert shm_files(run)
    assert shim.stop() == 0, shim.log()
    assert runs(tmp_path) == [] and shm_files(run) == []
    assert not os.path.exists(shim.socket) and not os.path.exists(shim.socket + ".lane")


def test_the_next_start_clears_what_a_sigkill_left(shims: list[Shim], tmp_path: Path) -> None:
    """A killed store's sockets, /dev/shm files and run directory go at the next start (at
    another socket, as improv's nexus picks a new one per run); a live store's stay."""
    live = start(shims, tmp_path, "live", "-m", "10000000")
    killed = start(shims, tmp_path, "killed", "-m", "10000000")
    by_socket = {json.loads((run / "run.json").read_text())["socket"]: run
                 for run in runs(tmp_path)}
    live_run, killed_run = by_socket[live.socket], by_socket[killed.socket]
    with StoreClient(killed.socket) as store:
        store.put(b"x" * 100_000)
    killed.process.kill()
    killed.process.wait(10)
    assert killed_run.exists() and shm_files(killed_run)
    assert os.path.exists(killed.socket) and os.path.exists(killed.socket + ".lane")

    start(shims, tmp_path, "next", "-m", "10000000")
    assert not killed_run.exists() and shm_files(killed_run) == []
    assert not os.path.exists(killed.socket) and not os.path.exists(killed.socket + ".lane")
    assert live_run.exists() and shm_files(live_run)
    with StoreClient(live.socket) as store:
        assert store.health() == "SERVING"


def test_a_second_store_at_a_live_socket_leaves_the_first_alone(
    shims: list[Shim], tmp_path: Path
) -> None:
    first = start(shims, tmp_path, "store", "-m", "10000000")
    second = Shim(tmp_path, "store", "-m", "10000000")
    shims.append(second)
    assert second.process.wait(60) == 1
    assert "another server is already listening" in second.log()
    assert len(runs(tmp_path)) == 1 and serving_pid(first.socket) == first.process.pid


# -- the opt-in alias --------------------------------------------------------------------------


def test_install_adds_plasma_store_and_uninstall_removes_it(
    shims: list[Shim], tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    alias = bin_dir / "plasma_store"

    def manage(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([COMMAND, *words, "--bin-dir", str(bin_dir)],
                              capture_output=True, text=True, timeout=60)

    assert manage("--install").returncode == 0
    assert os.path.realpath(alias) == os.path.realpath(COMMAND)
    shim = Shim(tmp_path, "store", "-m", "4000", command=str(alias))
    shims.append(shim)
    shim.wait_serving()
    assert serving_pid(shim.socket) == shim.process.pid
    assert manage("--uninstall").returncode == 0 and not os.path.lexists(alias)

    alias.write_text("#!/bin/sh\n")  # someone else's plasma_store (pyarrow's, say)
    refused = manage("--install")
    assert refused.returncode == 1 and "--force replaces it" in refused.stderr
    assert manage("--uninstall").returncode == 1 and alias.read_text() == "#!/bin/sh\n"
    assert manage("--install", "--force").returncode == 0 and alias.is_symlink()
