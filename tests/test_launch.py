"""``launch()``: a failed start quotes the server's log, a socket another server holds is
an error (never a false success), and small sizes are rounded up as plasma_store took them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from improv_store.client import StoreClient
from improv_store.service import launch
from improv_store.service.launch import serving_pid
from improv_store.service.locality import MIN_ARENA

BAD_SLOTS = "index_slots must be 0 (off) or a power of two"
BAD_SLOTS_PATTERN = re.escape(BAD_SLOTS)


def test_a_failed_start_quotes_the_log_file(tmp_path: Path) -> None:
    """With ``log_path`` set the error still carries the server's own message (the log
    was opened write-only, and reading it raised io.UnsupportedOperation)."""
    log_path = tmp_path / "server.log"
    log_path.write_text("an earlier run's line\n")
    with pytest.raises(RuntimeError, match=BAD_SLOTS_PATTERN) as failed:
        launch(str(tmp_path / "s"), 64 << 20, extra_args=("--index-slots", "3"),
               log_path=str(log_path))
    assert "exited with 2" in str(failed.value)
    assert "earlier" not in str(failed.value)  # only this server's lines
    log = log_path.read_text()
    assert log.startswith("an earlier run's line\n") and BAD_SLOTS in log


def test_a_failed_start_quotes_the_anonymous_log(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=BAD_SLOTS_PATTERN):
        launch(str(tmp_path / "s"), 64 << 20, extra_args=("--index-slots", "3"))


def test_a_socket_held_by_another_server_is_an_error(tmp_path: Path) -> None:
    """The old server answers the health check at once; launch must not take that for
    the new server's answer (the new one cannot bind and exits 1)."""
    store_loc = str(tmp_path / "store")
    with launch(store_loc, 64 << 20, data_dir=str(tmp_path / "first")) as first:
        assert serving_pid(store_loc) == first.pid
        with pytest.raises(RuntimeError, match=rf"another improv-store server \(pid {first.pid}\)"
                                               rf" is serving at {store_loc}"):
            launch(store_loc, 64 << 20, data_dir=str(tmp_path / "second"))
        with StoreClient(store_loc) as store:
            assert store.health() == "SERVING"
            assert store.get(store.put(b"still the first")) == b"still the first"
    assert serving_pid(store_loc) is None
    assert not os.path.exists(tmp_path / "second")


def test_a_small_size_is_rounded_up(tmp_path: Path) -> None:
    """improv starts stores of 4,000 and 10,000 bytes; plasma_store took them."""
    log_path = tmp_path / "server.log"
    with launch(str(tmp_path / "store"), 4000, log_path=str(log_path)) as server, \
            StoreClient(server.store_loc) as store:
        assert store.info().arena_capacity == MIN_ARENA
        assert store.get(store.put(b"x" * 3000)) == b"x" * 3000
    assert "--memory 4000 bytes is below the arena's minimum" in log_path.read_text()


def test_serving_pid_is_none_without_a_listener(tmp_path: Path) -> None:
    assert serving_pid(str(tmp_path / "absent")) is None
