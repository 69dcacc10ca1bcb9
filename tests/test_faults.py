"""Faults the store must survive with clean statuses: a full disk, full /dev/shm, SIGKILL.

- The data directory on a 16 MiB tmpfs that fills up: puts are RESOURCE_EXHAUSTED, the
  server stays up and serves what it has, and recovers when space is freed (a file removed,
  or objects deleted: LMDB reuses their pages); a restart finds every acknowledged object.
- /dev/shm without room for an arena segment (the server gets a small private /dev/shm in a
  mount namespace). The arena itself full, with nothing to evict, is
  test_shm.py::test_memory_only_store_full_fails_fast_and_recovers_after_delete.
- SIGKILL while commits of many MiB are in flight. sync (small and large puts) and none are
  test_durability.py's SIGKILL tests; async with large commits is here.
- A payload corrupted on disk: test_verify.py.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import crc32c
import grpc
import numpy as np
import pytest
from conftest import ServerProcess
from test_lane import RawLane
from test_verify import CLEAN, verify

from improv_store.client import ObjectID, StoreClient, StoreError, StoreFull
from improv_store.client.transport import LaneTransport
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

MiB = 1 << 20
SETTLE_TIMEOUT = 30.0
CALL_TIMEOUT = 60.0  # a put that hangs instead of failing fails the test


def mount_tmpfs(path: Path, size: str, *, purpose: str) -> None:
    """Mount a tmpfs of ``size`` on ``path``; skip the test when this machine does not allow it."""
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(
            f"{purpose} needs to mount a tmpfs (root or CAP_SYS_ADMIN): {result.stderr.strip()}"
        )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted at teardown. Request it before ``start_server``, so that the
    servers on it are stopped first."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mount_tmpfs(mount_point, "16m", purpose="filling the data directory's disk")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def settle(check: Callable[[], bool], what: str) -> None:
    """Wait until ``check()`` holds."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def put_succeeds(store: StoreClient, data: bytes, acked: dict[ObjectID, bytes]) -> bool:
    """Try one put: True (and recorded in ``acked``) when it is acknowledged, False when the
    store is full."""
    try:
        acked[store.put(data)] = data
    except StoreFull:
        return False
    return True


def fill(store: StoreClient, acked: dict[ObjectID, bytes], before_each: Callable[[], None]) -> str:
    """Put 1 MiB objects until the store is full; return the refusal's message."""
    rng = np.random.default_rng(len(acked))
    for _ in range(64):
        before_each()
        data = rng.bytes(MiB)
        try:
            acked[store.put(data)] = data
        except StoreFull as full:
            return full.message
    raise AssertionError("64 MiB went into a 16 MiB disk")


def assert_all_back(store: StoreClient, acked: dict[ObjectID, bytes]) -> None:
    """Every acknowledged object is stored byte for byte, and nothing else is."""
    assert {info.id for info in store.list()} == acked.keys()
    for object_id, data in acked.items():
        assert crc32c.crc32c(store.get(object_id)) == crc32c.crc32c(data)


@pytest.mark.parametrize("transfer", ["inline", "auto"])
def test_full_disk_sync(
    small_disk: Path, start_server: Callable[..., ServerProcess], transfer: str
) -> None:
    """sync, data on a 16 MiB disk: once it is full a put is RESOURCE_EXHAUSTED saying so, and
    the refused object is not stored; the server goes on serving; removing a file, or
    deleting objects, makes room again; after SIGKILL every acknowledged object is back.
    Over gRPC (inline), and over the lane (auto: shared memory), whose puts, seals and
    deletes are answered when their commit is done, or has failed."""
    filler = small_disk / "filler"
    filler.write_bytes(bytes(4 * MiB))
    data_dir = str(small_disk / "data")
    server = start_server("--initial-map-size", "1M", "--wal-size", "4M", durability="sync",
                          data_dir=data_dir)
    acked: dict[ObjectID, bytes] = {}
    with server.client(transfer=transfer, timeout=CALL_TIMEOUT) as store:
        message = fill(store, acked, lambda: None)
        assert "disk full" in message and data_dir in message
        assert_all_back(store, acked)  # served, and the refused put left nothing behind
        with pytest.raises(StoreFull):
            store.put(bytes(MiB))
        if transfer == "auto":  # a small put over the lane, answered from its failed commit
            assert isinstance(store._route().transport, LaneTransport)
            with pytest.raises(StoreFull):
                store.put(b"small")

        filler.unlink()
        settle(lambda: put_succeeds(store, os.urandom(MiB), acked), "a put after freeing a file")
        fill(store, acked, lambda: None)
        for object_id in list(acked)[:4]:
            store.delete(object_id)
            del acked[object_id]
        settle(lambda: put_succeeds(store, os.urandom(MiB), acked), "a put after deletes")
        assert_all_back(store, acked)
    assert server.process.poll() is None, server.log()
    server.kill()

    assert verify(data_dir).returncode == CLEAN
    restarted = start_server(durability="sync", data_dir=data_dir)
    with restarted.client(transfer="inline", timeout=CALL_TIMEOUT) as store:
        assert_all_back(store, acked)


@pytest.mark.parametrize("path", ["lane", "grpc"])
def test_full_disk_sync_batch_put(
    small_disk: Path, start_server: Callable[..., ServerProcess], path: str
) -> None:
    """sync, data on a 16 MiB disk: BatchPut answers item by item once the items' commits
    are done (over the lane, from the commits themselves). A batch that fits is stored
    whole; in one larger than the room left, items whose commit failed are
    RESOURCE_EXHAUSTED and not stored, the others are stored, and the server is not the
    worse for it. A write-ahead log too large for the disk is not created, and leaves the
    disk's room to LMDB."""
    (small_disk / "filler").write_bytes(bytes(4 * MiB))
    data_dir = small_disk / "data"
    server = start_server("--initial-map-size", "1M", durability="sync", data_dir=str(data_dir))
    assert "no write-ahead log" in server.log()  # 32 MiB does not fit
    assert not (data_dir / "wal").exists() or (data_dir / "wal").stat().st_size == 0
    lane = RawLane(server.socket_path + ".lane") if path == "lane" else None
    channel = grpc.insecure_channel(server.unix_address)
    stub = store_pb2_grpc.StoreServiceStub(channel)

    def batch_put(payloads: list[bytes]) -> list[pb.BatchPutResult]:
        request = pb.BatchPutRequest(items=[pb.PutRequest(data=data) for data in payloads])
        if lane is None:
            return list(stub.BatchPut(request, timeout=CALL_TIMEOUT).results)
        status, body = lane.call(pb.LANE_METHOD_BATCH_PUT, request.SerializeToString())
        assert status == grpc.StatusCode.OK, body
        return list(pb.BatchPutResponse.FromString(body).results)

    full = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    fits = [os.urandom(200 << 10) for _ in range(10)]
    assert [result.code for result in batch_put(fits)] == [0] * len(fits)
    too_much = [os.urandom(200 << 10) for _ in range(60)]  # 12 MiB: more than is left
    results = batch_put(too_much)
    assert full in [result.code for result in results]
    with server.client(transfer="inline", timeout=CALL_TIMEOUT) as store:
        for result, data in zip(results, too_much, strict=True):
            if result.code == full:
                assert "disk full" in result.message
            else:
                assert result.code == 0 and store.get(result.meta.id) == data
        stored = len(fits) + sum(result.code != full for result in results)
        settle(lambda: store.info().object_count == stored, "the refused items withdrawn")
    channel.close()
    assert server.process.poll() is None, server.log()


def test_full_disk_async(small_disk: Path, start_server: Callable[..., ServerProcess]) -> None:
    """async, data on a 16 MiB disk: a put acknowledged before its commit failed for lack of
    space stays stored (in memory, then on disk once there is room); new puts are refused
    meanwhile. Each put waits for the previous one's commit, so the one that overflows the
    disk is known."""
    filler = small_disk / "filler"
    filler.write_bytes(bytes(4 * MiB))
    data_dir = str(small_disk / "data")
    server = start_server("--initial-map-size", "1M", durability="async", data_dir=data_dir)
    acked: dict[ObjectID, bytes] = {}
    with server.client(transfer="inline", timeout=CALL_TIMEOUT) as store:

        def previous_put_committed() -> None:
            settle(
                lambda: (
                    (info := store.info()).committed_sequence == info.last_sequence
                    or "disk full" in server.log()
                ),
                "the previous put committed",
            )

        message = fill(store, acked, previous_put_committed)
        assert "disk full" in message and "refused until it has room" in message
        info = store.info()
        assert info.committed_sequence < info.last_sequence  # the last acknowledged put waits
        assert_all_back(store, acked)

        filler.unlink()
        settle(
            lambda: (info := store.info()).committed_sequence == info.last_sequence,
            "the waiting commit lands once there is room",
        )
        assert put_succeeds(store, os.urandom(MiB), acked)
    assert server.stop() == 0
    restarted = start_server(durability="async", data_dir=data_dir)
    with restarted.client(transfer="inline", timeout=CALL_TIMEOUT) as store:
        assert_all_back(store, acked)


def test_dev_shm_without_room_for_a_segment(
    start_server: Callable[..., ServerProcess],
) -> None:
    """A server whose /dev/shm (a private 24 MiB tmpfs) has no room left for its 16 MiB
    arena segment: the put is RESOURCE_EXHAUSTED naming /dev/shm, the server stays up, and
    once the space is back the put succeeds."""
    namespace = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if namespace.returncode != 0:
        pytest.skip(f"needs a mount namespace (root or CAP_SYS_ADMIN): {namespace.stderr.strip()}")
    private_shm = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount -t tmpfs -o size=24m tmpfs /dev/shm && exec "$@"',
        "sh",
    ]
    server = start_server("--memory", "16M", durability="none", wrapper=private_shm)
    filler = Path(f"/proc/{server.process.pid}/root/dev/shm/filler")  # the server's /dev/shm
    filler.write_bytes(bytes(12 * MiB))
    with server.client(transfer="inline", timeout=CALL_TIMEOUT) as store:
        with pytest.raises(StoreFull) as full:
            store.put(b"frame", name="frame")
        assert "/dev/shm" in full.value.message and "No space left" in full.value.message
        assert store.info().object_count == 0
        filler.unlink()
        object_id = store.put(b"frame", name="frame")
        assert store.get("frame") == b"frame" and store.stat("frame").id == object_id
    assert server.process.poll() is None, server.log()


def test_async_sigkill_during_large_commits(start_server: Callable[..., ServerProcess]) -> None:
    """async: SIGKILL while 4 MiB puts stream in and commits of several MiB are in flight.
    Everything the server reported committed before the burst is back byte for byte; of the
    rest, whatever came back is intact; the store verifies clean, opens, and never reuses a
    sequence number a subscriber may have seen."""
    server = start_server("--commit-interval", "0.05", durability="async")
    rng = np.random.default_rng(5)
    early: dict[ObjectID, int] = {}
    burst: dict[ObjectID, int] = {}
    with server.client(timeout=CALL_TIMEOUT) as store:
        for _ in range(8):
            data = rng.bytes(MiB)
            early[store.put(data)] = crc32c.crc32c(data)
        settle(
            lambda: (info := store.info()).committed_sequence == info.last_sequence,
            "the early puts committed",
        )
        stop = threading.Event()
        failure: list[BaseException] = []

        def stream_large_puts() -> None:
            try:
                while not stop.is_set():
                    data = rng.bytes(4 * MiB)
                    burst[store.put(data)] = crc32c.crc32c(data)
            except StoreError:
                pass  # the server was killed
            except BaseException as exc:
                failure.append(exc)

        writer = threading.Thread(target=stream_large_puts)
        writer.start()
        try:
            settle(lambda: len(burst) >= 24, "96 MiB of puts acknowledged")
            seen_sequence = store.info().last_sequence
            server.kill()
        finally:
            stop.set()
            writer.join(CALL_TIMEOUT)
        assert not failure, failure

    assert verify(server.data_dir).returncode == CLEAN
    restarted = start_server(
        "--commit-interval", "0.05", durability="async", data_dir=server.data_dir
    )
    with restarted.client(timeout=CALL_TIMEOUT) as store:
        back = {info.id for info in store.list()}
        assert early.keys() <= back <= early.keys() | burst.keys()
        for object_id in back:
            assert crc32c.crc32c(store.get(object_id)) == (early | burst)[object_id]
        store.put(b"after")
        assert store.info().last_sequence > seen_sequence
