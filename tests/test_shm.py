"""Colocated zero-copy transfer: shared-memory views across real processes, and their safety.

Every test runs a real server (``start_server``) and, where the behaviour depends
on it, clients in separate spawned processes ("peers") driven step by step over a
pipe. Addresses of arrays are checked against the peer's own /proc/self/maps, so
"zero copy" means the bytes really are the store's /dev/shm segment.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import crc32c
import grpc
import numpy as np
import pytest
from test_lane import subscription_path
from test_verify import CLEAN, CORRUPT, verify

from improv_store.client import DataCorrupted, ObjectID, ObjectNotFound, StoreClient, StoreFull
from improv_store.client.models import StoreInfo
from improv_store.client.shm import SegmentMaps
from improv_store.protocol import SHM_DIR
from improv_store.service.locality import store_prefix
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

SPAWN = multiprocessing.get_context("spawn")
MiB = 1 << 20
PEER_TIMEOUT = 30.0
SETTLE_TIMEOUT = 10.0

# -- helpers usable in any process ---------------------------------------------------------


def checksum(array: np.ndarray | bytes) -> int:
    """CRC32C of an array's bytes in C order (no copy when it is C-contiguous)."""
    if isinstance(array, bytes):
        return crc32c.crc32c(array)
    return crc32c.crc32c(memoryview(np.ascontiguousarray(array)).cast("B"))


def mapping_of(address: int) -> str:
    """The path of this process's mapping that contains ``address`` ("" when anonymous/none)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            if start <= address < end:
                return fields[5].strip() if len(fields) > 5 else ""
    return ""


def owns_memory(array: np.ndarray) -> bool:
    """True when the array's memory belongs to the Python heap: its base chain ends in an
    owning ndarray or a bytes object, not in an exporter of someone else's mapping."""
    current: Any = array
    while isinstance(current, np.ndarray):
        if current.flags.owndata:
            return True
        current = current.base
    return isinstance(current, bytes)


def describe(array: np.ndarray) -> dict[str, Any]:
    """What a process sees of an array: contents, ownership, flags and backing mapping."""
    start = array.ctypes.data
    try:
        array.flags.writeable = True
        can_make_writeable = True
        array.flags.writeable = False
    except ValueError:
        can_make_writeable = False
    return {
        "pid": os.getpid(),
        "crc": checksum(array),
        "dtype": array.dtype.str,
        "shape": array.shape,
        "owndata": array.flags.owndata,
        "owns_memory": owns_memory(array),
        "writeable": array.flags.writeable,
        "can_make_writeable": can_make_writeable,
        "mapping": mapping_of(start),
        "mapping_of_last_byte": mapping_of(start + max(array.nbytes - 1, 0)),
    }


# -- peers: clients in their own spawned processes -----------------------------------------


def peer_main(conn: Any) -> None:
    """Child process: run ``peer_*`` functions of this module on request, with shared state."""
    state: dict[str, Any] = {}
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            break
        name, args = message
        try:
            conn.send((True, globals()[name](state, *args)))
        except BaseException:
            conn.send((False, traceback.format_exc()))
    for key in ("subscription", "store"):
        if key in state:
            with contextlib.suppress(Exception):
                state[key].close()


class Peer:
    """A client process driven over a pipe; every call is bounded by a timeout."""

    def __init__(self) -> None:
        self._conn, child = SPAWN.Pipe()
        self.process = SPAWN.Process(target=peer_main, args=(child,), daemon=True)
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def call(self, function: Callable[..., Any], *args: Any, timeout: float = PEER_TIMEOUT) -> Any:
        self._conn.send((function.__name__, args))
        if not self._conn.poll(timeout):
            raise AssertionError(f"peer {self.pid} gave no answer to {function.__name__} in time")
        ok, value = self._conn.recv()
        if not ok:
            raise AssertionError(f"peer {self.pid} failed in {function.__name__}:\n{value}")
        return value

    def kill(self) -> None:
        """SIGKILL: the client dies with no chance to release anything."""
        os.kill(self.pid, signal.SIGKILL)
        self.process.join(10)
        assert self.process.exitcode == -signal.SIGKILL

    def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)
        self._conn.close()


@pytest.fixture
def peer() -> Iterator[Callable[[], Peer]]:
    """Factory of peer processes; all are ended at teardown."""
    peers: list[Peer] = []

    def make() -> Peer:
        peers.append(Peer())
        return peers[-1]

    yield make
    for each in peers:
        each.close()


def peer_connect(
    state: dict[str, Any], address: str, transfer: str | None = None, lane: bool | None = None
) -> bool:
    """Open this process's client; return whether it is colocated."""
    state["store"] = StoreClient(address, timeout=PEER_TIMEOUT, transfer=transfer, lane=lane)
    return state["store"].colocated


def peer_get(state: dict[str, Any], ref: Any, key: str = "view") -> dict[str, Any]:
    """Get an object and keep it alive under ``key``; describe it if it is an array."""
    value = state["store"].get(ref)
    state[key] = value
    return describe(value) if isinstance(value, np.ndarray) else {"type": type(value).__name__}


def peer_describe(state: dict[str, Any], key: str = "view") -> dict[str, Any]:
    """Describe an array this process still holds (after others changed the store)."""
    return describe(state[key])


def peer_copy_equal(state: dict[str, Any], key: str = "view") -> bool:
    """Whether the held view still equals the private copy taken when it was first read."""
    return bool(np.array_equal(state[key], state[key + "_copy"]))


def peer_keep_copy(state: dict[str, Any], key: str = "view") -> None:
    state[key + "_copy"] = np.array(state[key], copy=True)


def peer_drop(state: dict[str, Any], key: str = "view") -> None:
    """Drop every reference to a view, so its lease is released."""
    del state[key]
    gc.collect()


def peer_hold_pin_and_create(state: dict[str, Any], ref: Any, size: int) -> dict[str, Any]:
    """Hold a live view from get and an unsealed create (a ``with`` block never exited)."""
    store = state["store"]
    state["view"] = store.get(ref)
    creation = store.create((size,), "uint8", name="never-sealed")
    state["creation"] = creation
    state["frame"] = creation.__enter__()
    state["frame"][:] = 7
    return describe(state["view"])


def peer_get_container(state: dict[str, Any], ref: Any) -> dict[str, Any]:
    """Get a pickled container; describe each array in it and echo the other entries."""
    value = state["store"].get(ref)
    state["container"] = value
    return {
        key: describe(item) if isinstance(item, np.ndarray) else item for key, item in value.items()
    }


def peer_subscribe(state: dict[str, Any], prefix: str) -> str:
    """Subscribe with values from just after the current sequence; events queue up.
    Returns the way the subscription runs ("lane" or "grpc")."""
    store = state["store"]
    since = store.info().last_sequence + 1
    subscription = store.subscribe(prefix, since=since, values=True)
    events: queue.Queue = queue.Queue()

    def follow() -> None:
        try:
            for event in subscription:
                value = event.value
                summary: dict[str, Any] = {
                    "type": event.type,
                    "name": event.object.name,
                    "value_is_none": value is None,
                    "array": describe(value) if isinstance(value, np.ndarray) else None,
                }
                del value
                events.put(summary)
        except BaseException as exc:
            events.put({"error": repr(exc)})

    state["subscription"] = subscription
    state["events"] = events
    threading.Thread(target=follow, daemon=True).start()
    return subscription_path(subscription)


def peer_next_event(state: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """The next event's summary, or None when none arrives within ``timeout`` seconds."""
    try:
        return state["events"].get(timeout=timeout)
    except queue.Empty:
        return None


# -- helpers for the test process ----------------------------------------------------------


def settle(
    store: StoreClient,
    done: Callable[[StoreInfo], bool],
    what: str,
    timeout: float = SETTLE_TIMEOUT,
) -> StoreInfo:
    """Poll Info until ``done`` holds; fail after ``timeout`` seconds showing the last Info."""
    deadline = time.monotonic() + timeout
    while True:
        info = store.info()
        if done(info):
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s; last Info {info}")
        time.sleep(0.05)


def usage(info: StoreInfo) -> tuple[int, int, int]:
    return info.arena_used, info.arena_pinned, info.sessions


def random_array(nbytes: int, seed: int, dtype: str = "uint8") -> np.ndarray:
    """Reproducible random contents of exactly ``nbytes`` bytes."""
    raw = np.random.default_rng(seed).bytes(nbytes)
    return np.frombuffer(raw, dtype=dtype).copy()


def assert_shm_view(seen: dict[str, Any], data_dir: str) -> None:
    """The array a peer described is a read-only view on one of this store's segments."""
    segment_path = os.path.join(SHM_DIR, store_prefix(data_dir))
    assert seen["owndata"] is False
    assert seen["owns_memory"] is False
    assert seen["writeable"] is False
    assert seen["can_make_writeable"] is False, "a reader could write into the store's memory"
    assert seen["mapping"].startswith(segment_path), seen["mapping"]
    assert seen["mapping_of_last_byte"] == seen["mapping"]


def shm_files(prefix: str) -> set[str]:
    return {name for name in os.listdir(SHM_DIR) if name.startswith(prefix)}


# -- 1. zero-copy gets ---------------------------------------------------------------------


def test_large_get_in_another_process_is_readonly_view_on_store_segment(
    start_server: Any, peer: Callable[[], Peer]
) -> None:
    """A 100 MiB array put here comes back in another process as a read-only view of the
    store's /dev/shm segment (no owned copy), with exactly the bytes that were put."""
    server = start_server("--memory", "256M")
    original = random_array(100 * MiB, seed=1, dtype="<f4").reshape(25 * 256, 4096)
    with server.client() as store:
        assert store.colocated
        object_id = store.put(original, name="big")
        consumer = peer()
        assert consumer.call(peer_connect, server.unix_address) is True
        seen = consumer.call(peer_get, object_id.binary())
    assert seen["pid"] != os.getpid()
    assert_shm_view(seen, server.data_dir)
    assert seen["dtype"] == "<f4" and seen["shape"] == (25 * 256, 4096)
    assert seen["crc"] == checksum(original)


# -- 2. a client killed while holding pins and a create ------------------------------------


def test_sigkilled_client_pins_and_unsealed_create_are_freed(
    start_server: Any, peer: Callable[[], Peer]
) -> None:
    """A client SIGKILLed while holding a view and an unsealed create loses both: the server
    drops its session, unpins the object and frees the region, back to the prior usage."""
    server = start_server("--memory", "64M")
    with server.client() as store:
        object_id = store.put(random_array(4 * MiB, seed=2), name="pinned")
        baseline = store.info()
        child = peer()
        assert child.call(peer_connect, server.unix_address)
        seen = child.call(peer_hold_pin_and_create, object_id.binary(), 6 * MiB)
        assert_shm_view(seen, server.data_dir)
        held = store.info()
        assert held.arena_pinned == baseline.arena_pinned + 4 * MiB + 6 * MiB
        assert held.arena_used == baseline.arena_used + 6 * MiB
        assert held.sessions == baseline.sessions + 1

        child.kill()
        settle(store, lambda info: usage(info) == usage(baseline), "usage back to baseline")
        with pytest.raises(ObjectNotFound):
            store.stat("never-sealed")


# -- 3. delete while another process reads -------------------------------------------------


def test_delete_under_a_reader_keeps_its_view_until_dropped(
    start_server: Any, peer: Callable[[], Peer]
) -> None:
    """Deleting an object another process is reading never pulls memory from under it: the
    view stays intact while the region is pinned (new puts cannot reuse it), and the memory
    is freed and reused only after the reader drops the view."""
    object_size = 4 * MiB  # --memory 16M holds exactly four of these
    server = start_server("--memory", "16M", durability="none")
    original = random_array(object_size, seed=3)
    with server.client() as store:
        object_id = store.put(original, name="shared")
        reader = peer()
        assert reader.call(peer_connect, server.unix_address)
        first = reader.call(peer_get, object_id.binary())
        assert_shm_view(first, server.data_dir)
        reader.call(peer_keep_copy)

        store.delete(object_id)
        for round_ in range(12):  # reuse the three free slots many times over
            ids = [store.put(np.full(object_size, round_ * 3 + k, np.uint8)) for k in range(3)]
            for new_id in ids:
                store.delete(new_id)
        fills = [store.put(np.full(object_size, 200 + k, np.uint8)) for k in range(3)]
        with pytest.raises(StoreFull):  # a fourth slot would be the reader's region
            store.put(np.full(object_size, 203, np.uint8))
        for fill in fills:
            store.delete(fill)

        later = reader.call(peer_describe)
        assert later["crc"] == first["crc"] == checksum(original)
        assert later["mapping"] == first["mapping"]
        assert reader.call(peer_copy_equal) is True
        info = store.info()
        assert info.object_count == 0
        assert info.arena_pinned == object_size
        assert info.arena_used == object_size

        reader.call(peer_drop)
        settle(
            store,
            lambda info: info.arena_pinned == 0 and info.arena_used == 0,
            "deleted object freed after the reader dropped its view",
        )
        refill = [store.put(np.full(object_size, 100 + k, np.uint8)) for k in range(4)]
        assert store.info().arena_used == 4 * object_size
        assert checksum(store.get(refill[3])) == checksum(np.full(object_size, 103, np.uint8))


# -- 4. a full arena: eviction when durable, StoreFull when not ----------------------------


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_durable_objects_beyond_memory_are_evicted_and_reload(
    start_server: Any, durability: str
) -> None:
    """With durable storage, putting 160 MiB into a 64 MiB arena succeeds by evicting cold
    committed objects; every object still reads back intact (reloaded from LMDB)."""
    server = start_server("--memory", "64M", durability=durability)
    expected = {}
    with server.client() as store:
        for index in range(20):
            data = random_array(8 * MiB, seed=100 + index)
            try:
                expected[store.put(data, name=f"frame{index}")] = checksum(data)
            except StoreFull as exc:
                pytest.fail(f"put {index + 1} of 20 (8 MiB each, 64 MiB arena) failed: {exc}")
        info = store.info()
        assert info.evictions > 0
        assert info.object_count == 20
        for object_id, crc in expected.items():
            view = store.get(object_id)
            assert checksum(view) == crc
            del view
            gc.collect()
            # What may stay pinned is a region reserved for this client's next 8 MiB put
            # (if the last seal found room for one without committing first).
            settle(store, lambda info: info.arena_pinned in (0, 8 * MiB), "view released")
        assert store.info().evictions > info.evictions


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_frames_deleted_before_their_commit_hand_their_memory_to_the_next(
    start_server: Any, durability: str
) -> None:
    """async: a frame put and deleted before its commit frees its memory at once (its put
    has not left the queue, so its payload is never read): a stream of such frames
    reuses one region, with no commit at all. sync (the log applied only when memory is
    needed): 200 MiB of frames pass through 64 MiB. Either way a restart, after a clean
    stop or SIGKILL, finds exactly the one frame kept."""
    server = start_server("--commit-interval", "3600", "--log-apply-interval", "3600",
                          "--memory", "64M", durability=durability)
    frame = np.ones(1 << 20, dtype=np.uint8)
    with server.client(transfer="shm") as store:
        for i in range(200):  # 200 MiB through a 64 MiB arena
            frame[0] = i
            store.delete(store.put(frame))
        kept = store.put(frame)
        info = store.info()
        if durability == "async":  # nothing committed: every frame met its delete in the queue
            assert info.commits == 0
            assert info.arena_used <= 2 << 20 and info.segments <= 2
    if durability == "sync":
        server.kill()
    else:
        assert server.stop() == 0
    restarted = start_server(durability=durability, data_dir=server.data_dir)
    with restarted.client() as store:
        assert store.info().object_count == 1
        assert (store.get(kept) == frame).all()


def test_memory_only_store_full_fails_fast_and_recovers_after_delete(start_server: Any) -> None:
    """Without durable storage nothing can be evicted: the put that does not fit fails at
    once with StoreFull naming capacity, used and pinned; what was stored stays intact and
    deleting makes room again."""
    server = start_server("--memory", "32M", durability="none")
    expected = {}
    with server.client(timeout=10) as store:  # a server waiting for memory would time out
        for index in range(4):
            data = random_array(8 * MiB, seed=200 + index)
            expected[store.put(data, name=f"frame{index}")] = checksum(data)
        with pytest.raises(StoreFull) as full:
            store.put(random_array(8 * MiB, seed=299), name="too-much")
        assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        message = full.value.message
        assert "capacity" in message and "used" in message and "pinned" in message
        assert str(32 * MiB) in message
        for object_id, crc in expected.items():
            view = store.get(object_id)
            assert checksum(view) == crc
            del view
        gc.collect()
        settle(store, lambda info: info.arena_pinned == 0, "views released")
        with pytest.raises(ObjectNotFound):
            store.stat("too-much")

        store.delete("frame0")
        store.delete("frame1")
        for index in range(2):
            data = random_array(8 * MiB, seed=300 + index)
            assert checksum(store.get(store.put(data))) == checksum(data)


def test_next_segment_is_prepared_before_a_put_needs_it(start_server: Any) -> None:
    """Once the newest 64 MiB segment is a quarter full, a spare appears in /dev/shm without a
    put waiting for it; the spare respects --memory and a clean stop removes it."""
    server = start_server("--memory", "256M")
    prefix = store_prefix(server.data_dir)
    frame = np.ones(MiB, dtype=np.uint8)
    with server.client() as store:
        for _ in range(20):
            store.put(frame)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while store.info().segments < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.info().segments == 2
        # Two segments, the index, and this client's pin table.
        assert len(shm_files(prefix) - {prefix + "token", prefix + "lock"}) == 4
        for _ in range(70):
            store.put(frame)  # into the spare; past its quarter, the next one is made
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while store.info().segments < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.info().segments == 3
    assert server.stop() == 0
    assert shm_files(prefix) == set()
    small = start_server("--memory", "64M")
    with small.client() as store:
        for _ in range(40):
            store.put(frame)
        time.sleep(0.5)
        assert store.info().segments == 1  # no room for a spare within --memory


# -- 5. forged and foreign handles ---------------------------------------------------------


class RawSession:
    """A Session stream opened through the raw stub; it sends nothing until closed."""

    def __init__(self, stub: store_pb2_grpc.StoreServiceStub) -> None:
        self._stop = threading.Event()
        self.call = stub.Session(self._requests(), timeout=120)
        self.session_id: str = next(self.call).session_id

    def _requests(self) -> Iterator[pb.SessionRequest]:
        self._stop.wait(120)
        yield from ()

    def close(self) -> None:
        self._stop.set()
        self.call.cancel()


def status_of(method: Any, request: Any) -> grpc.StatusCode:
    """The status a unary call ends with (OK when it succeeds)."""
    try:
        method(request, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def changed(handle: pb.ShmHandle, **fields: Any) -> pb.ShmHandle:
    forged = pb.ShmHandle()
    forged.CopyFrom(handle)
    for name, value in fields.items():
        setattr(forged, name, value)
    return forged


def test_forged_and_foreign_handles_are_refused_and_server_keeps_serving(
    start_server: Any,
) -> None:
    """Handles that were tampered with, belong to another session, or do not exist are
    refused with precise statuses; nothing leaks, and the server goes on serving."""
    server = start_server("--memory", "64M", "--max-object-size", "8M")
    with grpc.insecure_channel(server.unix_address) as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        stored = stub.Put(pb.PutRequest(spec=pb.ObjectSpec(name="target"), data=b"x" * 4096))
        baseline = StoreInfo.from_proto(stub.Info(pb.InfoRequest()))
        a, b = RawSession(stub), RawSession(stub)
        assert a.session_id != b.session_id
        spec = pb.ObjectSpec(name="forged", encoding=pb.ENCODING_RAW)
        handle = stub.Create(pb.CreateRequest(session_id=a.session_id, spec=spec, size=4096)).handle
        assert handle.length == 4096

        def seal(session: RawSession, forged: pb.ShmHandle) -> grpc.StatusCode:
            request = pb.SealRequest(session_id=session.session_id, handle=forged)
            return status_of(stub.Seal, request)

        invalid = grpc.StatusCode.INVALID_ARGUMENT
        assert seal(a, changed(handle, offset=handle.offset + 64)) == invalid
        assert seal(a, changed(handle, length=handle.length + 64)) == invalid
        assert seal(a, changed(handle, length=handle.length - 1)) == invalid
        assert seal(a, changed(handle, segment=handle.segment + "x")) == invalid
        assert seal(a, changed(handle, segment="../../etc/passwd")) == invalid
        unknown_create = changed(handle, lease_id=handle.lease_id + 1000)
        assert seal(a, unknown_create) == grpc.StatusCode.NOT_FOUND

        denied = grpc.StatusCode.PERMISSION_DENIED
        assert seal(b, handle) == denied
        abort_b = pb.AbortRequest(session_id=b.session_id, handle=handle)
        assert status_of(stub.Abort, abort_b) == denied

        get = pb.GetRequest(
            ref=pb.ObjectRef(id=stored.meta.id), transfer=pb.TRANSFER_SHM, session_id=a.session_id
        )
        lease = stub.Get(get, timeout=10).handle
        assert lease.lease_id and lease.length == 4096
        release = pb.ReleaseRequest(session_id=b.session_id, lease_ids=[lease.lease_id])
        assert status_of(stub.Release, release) == denied
        unknown = pb.ReleaseRequest(session_id=a.session_id, lease_ids=[987_654_321])
        assert status_of(stub.Release, unknown) == grpc.StatusCode.NOT_FOUND
        mixed = pb.ReleaseRequest(session_id=a.session_id, lease_ids=[lease.lease_id, 987_654_321])
        assert status_of(stub.Release, mixed) == grpc.StatusCode.NOT_FOUND

        precondition = grpc.StatusCode.FAILED_PRECONDITION
        for bogus in ("", "not-a-session", "0" * 32):
            get.session_id = bogus
            assert status_of(stub.Get, get) == precondition
            create = pb.CreateRequest(session_id=bogus, spec=spec, size=16)
            assert status_of(stub.Create, create) == precondition

        too_big = pb.CreateRequest(session_id=a.session_id, spec=spec, size=9 * MiB)
        assert status_of(stub.Create, too_big) == grpc.StatusCode.RESOURCE_EXHAUSTED
        malformed_specs = [
            pb.ObjectSpec(id=b"short"),
            pb.ObjectSpec(name="bad\x00name"),
            pb.ObjectSpec(encoding=99),
            pb.ObjectSpec(
                encoding=pb.ENCODING_NDARRAY, array=pb.ArrayLayout(dtype="<f8", shape=[3])
            ),
            pb.ObjectSpec(encoding=pb.ENCODING_NDARRAY, array=pb.ArrayLayout(dtype="O", shape=[2])),
        ]
        for bad in malformed_specs:
            create = pb.CreateRequest(session_id=a.session_id, spec=bad, size=16)
            assert status_of(stub.Create, create) == invalid, bad
        replace_unnamed = pb.CreateRequest(
            session_id=a.session_id, spec=pb.ObjectSpec(), size=16, replace=True
        )
        assert status_of(stub.Create, replace_unnamed) == invalid

        batch = pb.BatchGetRequest(
            refs=[pb.ObjectRef(id=stored.meta.id)], transfer=pb.TRANSFER_SHM, session_id="bogus"
        )
        assert status_of(stub.BatchGet, batch) == precondition
        subscribe = pb.SubscribeRequest(transfer=pb.TRANSFER_AUTO, session_id="bogus")
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.Subscribe(subscribe, timeout=10))
        assert refused.value.code() == precondition

        # None of the refused attempts consumed or altered A's create: A can still abort it.
        abort_a = pb.AbortRequest(session_id=a.session_id, handle=handle)
        assert status_of(stub.Abort, abort_a) == grpc.StatusCode.OK
        assert status_of(stub.Abort, abort_a) == grpc.StatusCode.NOT_FOUND
        pending = pb.CreateRequest(session_id=a.session_id, spec=spec, size=8192)
        assert stub.Create(pending, timeout=10).handle.length == 8192  # left for the close

        during = StoreInfo.from_proto(stub.Info(pb.InfoRequest()))
        assert during.arena_pinned == 4096 + 8192  # A's lease plus A's unsealed create
        assert during.sessions == baseline.sessions + 2
        a.close()
        b.close()
        info = StoreInfo.from_proto(stub.Info(pb.InfoRequest()))
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while usage(info) != usage(baseline) and time.monotonic() < deadline:
            time.sleep(0.05)
            info = StoreInfo.from_proto(stub.Info(pb.InfoRequest()))
        assert usage(info) == usage(baseline)
        assert info.object_count == baseline.object_count

    assert server.process.poll() is None
    with server.client() as store:
        data = random_array(1 * MiB, seed=5)
        assert checksum(store.get(store.put(data))) == checksum(data)
        assert store.get("target") == b"x" * 4096


# -- 6. restart after a crash --------------------------------------------------------------


def test_restart_after_crash_removes_stale_segments(start_server: Any) -> None:
    """A SIGKILLed server leaves its segments in /dev/shm; the next server on the same data
    directory removes them at start, and a clean stop leaves nothing with the prefix."""
    first = start_server("--memory", "64M", durability="sync")
    prefix = store_prefix(first.data_dir)
    token_and_lock = {prefix + "token", prefix + "lock"}
    data = random_array(2 * MiB, seed=6)
    with first.client() as store:
        store.put(data, name="kept")
        assert store.info().segments >= 1
    first.kill()
    stale = shm_files(prefix) - token_and_lock
    assert stale, "a crashed server's segments should still be in /dev/shm"

    second = start_server("--memory", "64M", durability="sync", data_dir=first.data_dir)
    with second.client() as store:
        assert store.colocated  # the token file holds the new instance's token
        assert checksum(store.get("kept")) == checksum(data)  # reloaded into a new segment
        store.put(random_array(1 * MiB, seed=7), name="new")
        now = shm_files(prefix)
    assert not now & stale, f"stale segments survived the restart: {now & stale}"
    assert token_and_lock <= now
    segments = now - token_and_lock
    assert segments
    file_pattern = re.escape(prefix) + r"([0-9a-f]+)-(\d+|index|pins-\d+)"
    instances = {re.fullmatch(file_pattern, name) for name in segments}
    assert None not in instances, segments
    new_instance = {match.group(1) for match in instances if match}
    old_instance = {name[len(prefix) :].split("-")[0] for name in stale}
    assert len(new_instance) == 1 and not new_instance & old_instance

    assert second.stop() == 0
    assert shm_files(prefix) == set()


# -- 7. start-up check ---------------------------------------------------------------------


def test_memory_larger_than_dev_shm_fails_at_start_with_advice(tmp_path: Path) -> None:
    """Asking for more memory than /dev/shm has exits 1 at once, telling the user about
    --shm-size, and leaves nothing behind in /dev/shm."""
    data_dir = str(tmp_path / "data")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "improv_store.service",
            "--memory",
            "100T",
            "--socket",
            str(tmp_path / "s.sock"),
            "--listen",
            "",
            "--data-dir",
            data_dir,
        ],
        capture_output=True,
        timeout=60,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 1, output
    assert "--shm-size" in output
    assert shm_files(store_prefix(data_dir)) == set()


# -- 8. create(): filling an object in place -----------------------------------------------


def test_create_fills_in_place_and_aborts_on_exception(
    start_server: Any, peer: Callable[[], Peer]
) -> None:
    """store.create() hands out the object's own memory to fill; leaving the block stores it
    (readable from another process), an exception inside it stores nothing and frees the
    region, and afterwards the creator's array is read-only."""
    server = start_server("--memory", "64M")
    pattern = np.arange(512 * 512, dtype=np.uint16).reshape(512, 512) * 3
    with server.client() as store:
        creation = store.create((512, 512), "uint16", name="frame")
        with creation as frame:
            assert frame.flags.writeable and frame.shape == (512, 512)
            assert mapping_of(frame.ctypes.data).startswith(
                os.path.join(SHM_DIR, store_prefix(server.data_dir))
            )
            frame[:] = pattern
        assert creation.id is not None
        assert frame.flags.writeable is False
        with pytest.raises(ValueError):
            frame[0, 0] = 1

        reader = peer()
        assert reader.call(peer_connect, server.unix_address)
        seen = reader.call(peer_get, "frame")
        assert_shm_view(seen, server.data_dir)
        assert seen["crc"] == checksum(pattern)
        assert seen["dtype"] == "<u2" and seen["shape"] == (512, 512)
        reader.call(peer_drop)
        del frame  # the creator's array holds a lease on the object, like a get view
        gc.collect()
        baseline = settle(store, lambda info: info.arena_pinned == 0, "views released")

        aborted = store.create((512, 512), "uint16", name="aborted")
        with pytest.raises(RuntimeError, match="camera"), aborted as doomed:
            doomed[:] = 1
            assert store.info().arena_used > baseline.arena_used
            raise RuntimeError("camera unplugged")
        assert aborted.id is None
        with pytest.raises(ObjectNotFound):
            store.stat("aborted")
        assert [obj.name for obj in store.list()] == ["frame"]
        assert usage(store.info()) == usage(baseline)


def test_created_array_is_not_reused_under_the_creator(start_server: Any) -> None:
    """The array a create block leaves behind stays the stored bytes for as long as the
    creator holds it, like a view from get (item 3): deleting the object and putting new
    ones of the same size must not reuse its memory underneath the creator."""
    object_size = 4 * MiB  # --memory 16M holds exactly four of these
    server = start_server("--memory", "16M", durability="none")
    with server.client() as store:
        creation = store.create((object_size,), "uint8", name="made")
        with creation as frame:
            frame[:] = 1
        store.delete("made")
        ids = []
        with contextlib.suppress(StoreFull):
            for k in range(4):
                ids.append(store.put(np.full(object_size, 42 + k, np.uint8)))
        assert int(frame.min()) == int(frame.max()) == 1, (
            "the creator's array now shows another object"
        )
        assert len(ids) == 3, "the creator's region was handed to a new object while still in use"


# -- 9. containers of arrays ---------------------------------------------------------------


def test_dict_of_frames_comes_back_as_shm_views_in_another_process(
    start_server: Any, peer: Callable[[], Peer]
) -> None:
    """A dict holding arrays (a pickled container) comes back in another process with each
    array a read-only view on the store's shared memory, equal to the original."""
    server = start_server("--memory", "64M")
    frames = {
        "raw": random_array(256 * 256 * 2, seed=9, dtype="<u2").reshape(256, 256),
        "df": np.linspace(0, 1, 300 * 200, dtype=np.float64).reshape(300, 200),
        "mask": np.asfortranarray(random_array(128 * 96, seed=10).reshape(128, 96) > 127),
        "t": 12.5,
        "label": "trial-3",
    }
    with server.client() as store:
        object_id = store.put(frames, name="frames")
        assert store.stat(object_id).encoding == "pickle"
        reader = peer()
        assert reader.call(peer_connect, server.unix_address)
        seen = reader.call(peer_get_container, object_id.binary())
    assert seen.keys() == frames.keys()
    assert seen["t"] == 12.5 and seen["label"] == "trial-3"
    for key in ("raw", "df", "mask"):
        expected = frames[key]
        assert_shm_view(seen[key], server.data_dir)
        assert seen[key]["dtype"] == expected.dtype.str
        assert seen[key]["shape"] == expected.shape
        assert seen[key]["crc"] == checksum(expected), key


# -- 10. subscriptions with values ---------------------------------------------------------


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "grpc"])
def test_subscriber_in_another_process_receives_values_as_shm_views(
    start_server: Any, peer: Callable[[], Peer], lane: bool
) -> None:
    """subscribe(values=True) in another process, over the lane or gRPC, delivers each put
    and replace with the stored array as a shared-memory view (leased to the client's
    session) equal to what was put; deletes carry no value."""
    server = start_server("--memory", "64M")
    first = random_array(512 * 1024, seed=11, dtype="<f8")
    second = random_array(256 * 1024, seed=12, dtype="<i4")
    watcher = peer()
    assert watcher.call(peer_connect, server.unix_address, None, lane)
    assert watcher.call(peer_subscribe, "cam/") == ("lane" if lane else "grpc")
    with server.client() as store:
        store.put(random_array(128 * 1024, seed=13), name="other/x")  # not subscribed to
        store.put(first, name="cam/frame")
        event = watcher.call(peer_next_event, 10.0)
        assert event.get("type") == "put", event
        assert event["name"] == "cam/frame" and not event["value_is_none"]
        assert_shm_view(event["array"], server.data_dir)
        assert event["array"]["crc"] == checksum(first)

        store.replace("cam/frame", second)
        event = watcher.call(peer_next_event, 10.0)
        assert event.get("type") == "replace", event
        assert_shm_view(event["array"], server.data_dir)
        assert event["array"]["crc"] == checksum(second)
        assert event["array"]["dtype"] == "<i4"

        store.delete("cam/frame")
        event = watcher.call(peer_next_event, 10.0)
        assert event.get("type") == "delete", event
        assert event["value_is_none"] and event["array"] is None

        assert watcher.call(peer_next_event, 0.3) is None  # nothing for other/ or extra


# -- 11. forcing the transfer --------------------------------------------------------------


def test_transfer_inline_copies_and_transfer_shm_maps_even_small_arrays(
    start_server: Any, peer: Callable[[], Peer]
) -> None:
    """transfer="inline" gets a 100 MiB array as an owned copy outside shared memory;
    transfer="shm" gets even a 1 KiB array as a view on the store's segment."""
    server = start_server("--memory", "256M")
    big = random_array(100 * MiB, seed=14)
    small = random_array(1024, seed=15, dtype="<u2")
    with server.client() as store:
        big_id = store.put(big)
        small_id = store.put(small)
    inline = peer()
    assert inline.call(peer_connect, server.unix_address, "inline") is False
    seen = inline.call(peer_get, big_id.binary())
    assert seen["owns_memory"] is True
    assert not seen["mapping"].startswith(SHM_DIR + "/"), seen["mapping"]
    assert seen["crc"] == checksum(big)
    assert seen["writeable"] is False

    forced = peer()
    assert forced.call(peer_connect, server.unix_address, "shm") is True
    seen = forced.call(peer_get, small_id.binary())
    assert_shm_view(seen, server.data_dir)
    assert seen["crc"] == checksum(small)
    auto = peer()
    assert auto.call(peer_connect, server.unix_address) is True
    seen = auto.call(peer_get, small_id.binary())
    assert seen["owns_memory"] is True  # below shm_min_size, auto sends it inline
    assert seen["crc"] == checksum(small)


# -- 12. checksums of colocated writes -----------------------------------------------------


def frames_of(kind: str) -> Any:
    rng = np.random.default_rng(5)
    if kind == "dict-of-frames":  # pickle with out-of-band buffers: several parts to copy
        return {f"frame{i}": rng.integers(0, 255, (1024, 1024, 10), dtype=np.uint8)
                for i in range(4)}
    size = {"array-1MiB": 1 << 20, "array-40MiB": 40 << 20}[kind]
    return rng.integers(0, 255, size, dtype=np.uint8)


@pytest.mark.parametrize("kind", ["array-1MiB", "array-40MiB", "dict-of-frames"])
def test_colocated_puts_seal_with_the_checksum_of_what_they_copied(
    start_server: Any, kind: str
) -> None:
    """The client checksums what it copies into shared memory (above 16 MiB in a second
    thread, chunk by chunk) and the seal records it: it is the stored bytes' CRC32C, so
    the check of every payload on disk finds them sound."""
    server = start_server(durability="sync")
    value = frames_of(kind)
    with server.client(transfer="shm") as store:
        assert store.colocated
        object_id = store.put(value)
        if isinstance(value, np.ndarray):
            assert store.stat(object_id).crc32c == crc32c.crc32c(value)
    assert server.stop() == 0
    assert verify(server.data_dir).returncode == CLEAN


def test_a_seal_with_a_wrong_checksum_is_caught_when_read_from_disk(start_server: Any) -> None:
    """A writer that seals with a CRC32C its bytes do not have harms only its own object:
    the server records the value as given, and reads from disk and verify report the
    object as corrupt while its neighbour reads back intact."""
    server = start_server(durability="sync")
    payload = os.urandom(4096)
    with grpc.insecure_channel(server.unix_address) as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        neighbour = stub.Put(pb.PutRequest(spec=pb.ObjectSpec(name="neighbour"), data=payload))
        session = RawSession(stub)
        spec = pb.ObjectSpec(name="mislabelled", encoding=pb.ENCODING_RAW)
        request = pb.CreateRequest(session_id=session.session_id, spec=spec, size=len(payload))
        handle = stub.Create(request).handle
        maps = SegmentMaps()
        memoryview(maps.region(handle)).cast("B")[:] = payload
        wrong = crc32c.crc32c(payload) ^ 1
        seal = pb.SealRequest(session_id=session.session_id, handle=handle, crc32c=wrong)
        assert stub.Seal(seal).meta.crc32c == wrong
        session.close()
    assert server.stop() == 0
    result = verify(server.data_dir)
    assert result.returncode == CORRUPT and "mislabelled" in result.stdout

    restarted = start_server(durability="sync", data_dir=server.data_dir)
    with restarted.client(transfer="inline") as store:
        with pytest.raises(DataCorrupted):
            store.get("mislabelled")
        assert store.get(ObjectID(neighbour.meta.id)) == payload


# -- 13. regions reserved by a seal for the next put ------------------------------------------


def test_a_seal_reserves_the_next_region_and_its_seal_declares_the_object(
    start_server: Any,
) -> None:
    """reserve_next hands back a region of that size; sealed with a spec it becomes that
    object. Sealing it without a spec, or a Create's region with one, or with a spec
    that does not fit, is INVALID_ARGUMENT and frees the region; no room means no
    reservation, not an error; the session's end frees what it still holds."""
    server = start_server("--memory", "16M", "--max-object-size", "8M", durability="none")
    payload = os.urandom(MiB)
    with grpc.insecure_channel(server.unix_address) as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        session = RawSession(stub)
        maps = SegmentMaps()

        def fill(handle: pb.ShmHandle) -> None:
            memoryview(maps.region(handle)).cast("B")[:] = payload

        def used() -> int:
            return StoreInfo.from_proto(stub.Info(pb.InfoRequest())).arena_used

        spec = pb.ObjectSpec(name="frame", encoding=pb.ENCODING_RAW)
        created = stub.Create(pb.CreateRequest(session_id=session.session_id, spec=spec,
                                               size=MiB)).handle
        fill(created)
        first = stub.Seal(pb.SealRequest(session_id=session.session_id, handle=created,
                                         reserve_next=MiB))
        reserved = first.next_handle
        assert reserved.length == MiB and reserved.lease_id != created.lease_id
        assert used() == 2 * MiB

        fill(reserved)
        second = stub.Seal(pb.SealRequest(session_id=session.session_id, handle=reserved,
                                          spec=pb.ObjectSpec(name="frame", labels={"n": "2"}),
                                          replace=True, reserve_next=MiB))
        assert second.meta.labels == {"n": "2"} and second.replaced_ids == [first.meta.id]
        got = stub.Get(pb.GetRequest(ref=pb.ObjectRef(name="frame"),
                                     transfer=pb.TRANSFER_INLINE))
        assert got.data == payload

        invalid = grpc.StatusCode.INVALID_ARGUMENT
        no_spec = pb.SealRequest(session_id=session.session_id, handle=second.next_handle)
        assert status_of(stub.Seal, no_spec) == invalid
        declared = stub.Create(pb.CreateRequest(session_id=session.session_id, spec=spec,
                                                size=MiB)).handle
        twice = pb.SealRequest(session_id=session.session_id, handle=declared, spec=spec)
        assert status_of(stub.Seal, twice) == invalid
        retry = stub.Create(pb.CreateRequest(session_id=session.session_id, spec=spec,
                                             size=MiB)).handle
        bad = pb.SealRequest(session_id=session.session_id, handle=retry, reserve_next=MiB)
        unfit = stub.Seal(bad).next_handle
        wrong_layout = pb.ObjectSpec(encoding=pb.ENCODING_NDARRAY,
                                     array=pb.ArrayLayout(dtype="<f8", shape=[3]))
        misdeclared = pb.SealRequest(session_id=session.session_id, handle=unfit,
                                     spec=wrong_layout)
        assert status_of(stub.Seal, misdeclared) == invalid
        assert used() == 2 * MiB  # the two stored frames; every refused region was freed

        too_big = pb.SealRequest(session_id=session.session_id, reserve_next=9 * MiB)
        last = stub.Create(pb.CreateRequest(session_id=session.session_id, spec=spec,
                                            size=MiB)).handle
        too_big.handle.CopyFrom(last)
        assert not stub.Seal(too_big).HasField("next_handle")  # above max_object_size
        no_room = stub.Create(pb.CreateRequest(session_id=session.session_id, spec=spec,
                                               size=MiB)).handle
        crowded = pb.SealRequest(session_id=session.session_id, handle=no_room,
                                 reserve_next=15 * MiB)
        assert not stub.Seal(crowded).HasField("next_handle")  # 16 MiB arena, 4 MiB stored
        kept = stub.Create(pb.CreateRequest(session_id=session.session_id, spec=spec,
                                            size=MiB)).handle
        held = pb.SealRequest(session_id=session.session_id, handle=kept, reserve_next=2 * MiB)
        assert stub.Seal(held).next_handle.length == 2 * MiB
        assert used() == 7 * MiB
        session.close()
        deadline = time.monotonic() + 10
        while used() != 5 * MiB and time.monotonic() < deadline:  # the session's end frees it
            time.sleep(0.05)
        assert used() == 5 * MiB


def test_a_client_putting_frames_of_one_size_reuses_its_reservation(
    start_server: Any, peer: Callable[[], Peer]
) -> None:
    """A colocated client keeps one region of its last put's size reserved: frames of
    that size fill it (no Create), another size gives it back, and every frame reads
    back right in another process."""
    server = start_server(durability="none")
    frames = [random_array(MiB, seed) for seed in range(5)]
    other = random_array(2 * MiB, 9)
    with server.client(transfer="shm") as store:
        ids = [store.put(frame) for frame in frames]
        assert store.info().arena_pinned == MiB  # the reservation for the next 1 MiB frame
        wide = store.put(other)
        assert store.info().arena_pinned == 2 * MiB  # the 1 MiB one went back
        reader = peer()
        assert reader.call(peer_connect, server.unix_address)
        for object_id, frame in zip(ids, frames, strict=True):
            assert reader.call(peer_get, object_id.binary())["crc"] == checksum(frame)
        assert reader.call(peer_get, wide.binary())["crc"] == checksum(other)

