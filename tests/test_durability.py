"""What each durability mode promises holds across SIGTERM, SIGKILL and disk corruption."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import crc32c
import lmdb
import numpy as np
import pytest
from conftest import corrupt_payload
from test_verify import CLEAN, verify

from improv_store.client import DataCorrupted, ObjectID, StoreClient, StoreError

SPAWN = multiprocessing.get_context("spawn")


def write_until_failure(address: str, ledger: str, writer: int, max_size: int = 16_384) -> None:
    """Child process: put objects (1 to ``max_size`` bytes) until the server dies; log each
    acknowledged put.

    A line is written only after the put returned, so the ledger lists exactly
    the puts the server acknowledged.
    """
    rng = np.random.default_rng(writer)
    with StoreClient(address) as store, open(ledger, "w") as out:
        for index in range(100_000):
            payload = rng.bytes(int(rng.integers(1, max_size)))
            try:
                object_id = store.put(payload, name=f"w{writer}_{index}")
            except StoreError:
                return
            out.write(f"{object_id.hex()} {crc32c.crc32c(payload)}\n")
            out.flush()


def acknowledged(ledgers: list[Path]) -> dict[str, int]:
    entries = {}
    for ledger in ledgers:
        for line in ledger.read_text().splitlines():
            object_hex, checksum = line.split()
            entries[object_hex] = int(checksum)
    return entries


def wait_for_ledgers(ledgers: list[Path], lines: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.exists() and p.read_text().count("\n") >= lines for p in ledgers):
            return
        time.sleep(0.05)
    raise AssertionError("writers did not make progress")


@pytest.mark.parametrize(
    ("writers", "max_size", "lines"),
    [(4, 16 << 10, 200), (2, 8 << 20, 8)],
    ids=["small-puts", "large-commits"],
)
def test_sync_survives_sigkill_mid_storm(
    start_server: Any, tmp_path: Path, writers: int, max_size: int, lines: int
) -> None:
    """sync: writers in separate processes, SIGKILL mid-stream (with large puts, while commits
    of many MiB are in flight); every acknowledged put is back intact, nothing is corrupt."""
    server = start_server(durability="sync")
    ledgers = [tmp_path / f"ledger{i}" for i in range(writers)]
    processes = [
        SPAWN.Process(
            target=write_until_failure, args=(server.unix_address, str(path), i, max_size)
        )
        for i, path in enumerate(ledgers)
    ]
    for process in processes:
        process.start()
    wait_for_ledgers(ledgers, lines)
    server.kill()
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    expected = acknowledged(ledgers)
    assert len(expected) >= writers * lines
    assert verify(server.data_dir).returncode == CLEAN

    restarted = start_server(durability="sync", data_dir=server.data_dir)
    with restarted.client() as store:
        for object_hex, checksum in expected.items():
            object_id = ObjectID.from_hex(object_hex)
            assert store.stat(object_id).crc32c == checksum
            assert crc32c.crc32c(store.get(object_id)) == checksum


def test_async_loses_at_most_the_commit_window(start_server: Any) -> None:
    """async: puts older than the commit interval survive SIGKILL; the rest may not."""
    server = start_server("--commit-interval", "0.2", durability="async")
    with server.client() as store:
        early = {store.put(i, name="early"): i for i in range(300)}
        time.sleep(1.0)  # five commit intervals: the early puts are on disk
        late = {store.put(i, name="late"): i for i in range(300)}
        seen_sequence = store.info().last_sequence
    server.kill()

    restarted = start_server(
        "--commit-interval", "0.2", durability="async", data_dir=server.data_dir
    )
    with restarted.client() as store:
        for object_id, value in early.items():
            assert store.get(object_id) == value
        survivors = {info.id for info in store.list("late")}
        for object_id in survivors:
            assert store.get(object_id) == late[object_id]
        # Numbers a subscriber may have seen before the crash are never reused.
        assert store.put("after") and store.info().last_sequence > seen_sequence


def test_async_clean_stop_keeps_everything(start_server: Any) -> None:
    """async: SIGTERM flushes whatever the interval had not committed yet."""
    server = start_server("--commit-interval", "30", durability="async")
    with server.client() as store:
        ids = {store.put(np.full(100, i)): i for i in range(50)}
        last = store.info().last_sequence
    assert server.stop() == 0
    restarted = start_server(durability="async", data_dir=server.data_dir)
    with restarted.client() as store:
        for object_id, value in ids.items():
            assert (store.get(object_id) == value).all()
        info = store.info()
        assert info.object_count == 50 and info.last_sequence == last


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_none_restarts_empty(start_server: Any, stop: str) -> None:
    """none: memory only; nothing is written, a restart (after a clean stop or a crash)
    begins empty and serves."""
    server = start_server(durability="none")
    with server.client() as store:
        store.put(b"volatile", name="v")
        store.put(os.urandom(8 << 20), name="large")
        assert store.info().durability == "none"
    if stop == "sigterm":
        assert server.stop() == 0
    else:
        server.kill()
    assert not os.path.exists(os.path.join(server.data_dir, "data.mdb"))
    restarted = start_server(durability="none", data_dir=server.data_dir)
    with restarted.client() as store:
        assert store.info().object_count == 0
        assert list(store.list()) == []
        assert store.get(store.put(b"served")) == b"served"


def test_corruption_on_disk_is_detected(start_server: Any) -> None:
    """A payload that no longer matches its CRC32C is DATA_LOSS naming it, never data."""
    server = start_server(durability="sync")
    with server.client() as store:
        victim = store.put(np.arange(1000), name="victim")
        neighbour = store.put(np.arange(1000), name="neighbour")
    assert server.stop() == 0
    corrupt_payload(server.data_dir, victim)

    restarted = start_server(durability="sync", data_dir=server.data_dir)
    with restarted.client() as store:
        with pytest.raises(DataCorrupted, match=victim.hex()):
            store.get(victim)
        with pytest.raises(DataCorrupted):
            store.get_many([neighbour, victim])
        assert (store.get(neighbour) == np.arange(1000)).all()


def test_map_grows_instead_of_failing(start_server: Any) -> None:
    """Starting from a 1 MiB LMDB map, 64 MiB of sync puts succeed and survive restart."""
    server = start_server("--initial-map-size", "1M", durability="sync")
    frames = [np.full(1 << 17, i, dtype=np.float64) for i in range(64)]  # 1 MiB each
    with server.client() as store:
        ids = [store.put(frame) for frame in frames]
    assert server.stop() == 0
    assert os.path.getsize(os.path.join(server.data_dir, "data.mdb")) > 64 << 20
    restarted = start_server(
        "--initial-map-size", "1M", durability="sync", data_dir=server.data_dir
    )
    with restarted.client() as store:
        for object_id, frame in zip(ids, frames, strict=True):
            assert np.array_equal(store.get(object_id), frame)


def test_deletes_and_replaces_are_durable(start_server: Any) -> None:
    """After restart, deleted objects stay deleted and a replace keeps only the newest."""
    server = start_server(durability="sync")
    with server.client() as store:
        gone = store.put(b"gone")
        store.delete(gone)
        store.put(1, name="params")
        newest = store.replace("params", 2)
    server.kill()
    restarted = start_server(durability="sync", data_dir=server.data_dir)
    with restarted.client() as store:
        assert [info.id for info in store.list()] == [newest]
        assert store.get("params") == 2


def test_sync_put_many_is_durable_when_it_returns(start_server: Any) -> None:
    """sync: a batch acknowledged by put_many is all on disk, though it waited only once."""
    server = start_server(durability="sync")
    payloads = [os.urandom(1024) for _ in range(300)]
    with server.client(transfer="inline") as store:
        ids = store.put_many(payloads)
    server.kill()
    restarted = start_server(durability="sync", data_dir=server.data_dir)
    with restarted.client(transfer="inline") as store:
        assert store.get_many(ids) == payloads


def test_objects_deleted_before_their_commit_never_reach_the_disk(start_server: Any) -> None:
    """async: frames put and deleted within one commit interval are not written to LMDB,
    yet the history still holds their put and delete events, and the rest is kept."""
    server = start_server("--commit-interval", "30", durability="async")
    with server.client() as store:
        transient = [store.put(np.full(1 << 17, i)) for i in range(16)]  # 1 MiB each
        for object_id in transient:
            store.delete(object_id)
        kept = store.put(b"kept")
    assert server.stop() == 0
    env = lmdb.open(server.data_dir, max_dbs=4, readonly=True, lock=False)
    with env.begin(db=env.open_db(b"payloads", create=False)) as txn:
        assert [key for key, _ in txn.cursor()] == [kept.binary()]
    pages_ever_used = env.info()["last_pgno"] + 1
    assert pages_ever_used * env.stat()["psize"] < 2 << 20  # not the 16 MiB of frames
    env.close()
    restarted = start_server(durability="async", data_dir=server.data_dir)
    with restarted.client() as store:
        assert store.get(kept) == b"kept" and store.info().object_count == 1
        with store.subscribe(since=1) as history:
            types = [event.type for _, event in zip(range(33), history, strict=False)]
        assert types == ["put"] * 16 + ["delete"] * 16 + ["put"]
