"""The shared-memory object index: colocated gets without a call, small objects copied
out, large ones read in place under a pin.

The index must make gets faster and never different: every test compares what
the index path returns with what the server says, across deletes, memory
reuse, eviction, restarts, and a writer rewriting slots under a reader in
another process.
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
import random
import signal
import time
from typing import Any

import numpy as np
import pytest

from improv_store.client import ObjectID, ObjectNotFound, StoreClient, StoreFull
from improv_store.client.index import IndexReader
from improv_store.client.shm import SegmentMaps
from improv_store.service.arena import Arena
from improv_store.service.index import ObjectIndex, supported
from improv_store.v1 import store_pb2 as pb

pytestmark = pytest.mark.skipif(not supported(), reason="the index needs x86-64's memory model")

SPAWN = multiprocessing.get_context("spawn")


def payload_for(object_id: bytes, size: int) -> bytes:
    """Content that names its object: a reader can tell a torn or foreign payload."""
    pattern = hashlib.sha256(object_id).digest()
    return (pattern * (size // len(pattern) + 1))[:size]


def requests_served(store: StoreClient) -> int:
    """Calls the server has answered (the Info call that asks is counted after it)."""
    return store.info().requests


def test_small_gets_are_served_without_a_call(server: Any) -> None:
    """After the first call opens the lane, gets and get_many of small objects of every
    encoding come from the index: the server answers no request for them."""
    with server.client() as store:
        values = [b"raw bytes", np.arange(12, dtype="<i4").reshape(3, 4), {"a": [1, 2]}]
        ids = [store.put(value) for value in values]
        colocated = store._route().colocated
        assert colocated is not None and colocated.index is not None
        before = requests_served(store)
        for _ in range(20):
            assert store.get(ids[0]) == values[0]
            assert (store.get(ids[1]) == values[1]).all()
            assert store.get(ids[2]) == values[2]
            assert store.get_many(ids)[2] == values[2]
        assert requests_served(store) == before + 1  # only the Info call itself


def reader_process(
    address: str, ids: list[bytes], held_views: int, done: Any, results: Any
) -> None:
    """Get the IDs over and over until told to stop, keeping the last ``held_views``
    results and checking each again when it is dropped: report wrong payloads and counts."""
    wrong = found = missing = 0
    with StoreClient(address) as store:
        store.get(store.put(b"open the lane"))
        held: list[tuple[bytes, Any]] = []
        while not done.is_set():
            object_id = random.choice(ids)
            try:
                value = store.get(ObjectID(object_id))
            except ObjectNotFound:
                missing += 1
                continue
            found += 1
            wrong += not holds_its_payload(object_id, value)
            held.append((object_id, value))
            while len(held) > held_views:
                wrong += not holds_its_payload(*held.pop(0))
    results.put((wrong, found, missing))


def holds_its_payload(object_id: bytes, value: Any) -> bool:
    data = bytes(value)  # bytes, or the bytes of a uint8 array
    return data == payload_for(object_id, len(data))


@pytest.mark.parametrize(("kind", "sizes", "held_views"), [
    ("small, copied", (1, 4096), 0),
    ("large, in place", (64 << 10, 256 << 10), 8),
])
def test_a_reader_never_sees_a_payload_replaced_under_it(
    start_server: Any, kind: str, sizes: tuple[int, int], held_views: int
) -> None:
    """One process deletes and re-puts objects so their memory and slots are reused while
    another reads them through the index: each read is the object's own payload or
    ObjectNotFound, never another object's bytes or a torn copy; and a large object
    read in place keeps its bytes for as long as the reader holds it, however much
    memory is reused meanwhile (the arena is small)."""
    server = start_server("--memory", "16M", durability="none")
    rng = random.Random(7)
    ids = [rng.randbytes(20) for _ in range(64 if held_views == 0 else 24)]

    def payload(object_id: bytes) -> Any:
        data = payload_for(object_id, rng.randrange(*sizes))  # a new size moves it
        return data if held_views == 0 else np.frombuffer(data, np.uint8)

    done, results = SPAWN.Event(), SPAWN.Queue()
    reader = SPAWN.Process(target=reader_process,
                           args=(server.unix_address, ids, held_views, done, results))
    with server.client() as store:
        for object_id in ids:
            store.put(payload(object_id), id=object_id)
        reader.start()
        deadline = time.monotonic() + 4.0
        rewrites = 0
        while time.monotonic() < deadline:
            object_id = rng.choice(ids)
            store.delete(ObjectID(object_id))
            store.put(payload(object_id), id=object_id)
            rewrites += 1
        done.set()
        wrong, found, missing = results.get(timeout=30)
        reader.join(30)
    assert wrong == 0, f"{kind}: {wrong} of {found} reads held a payload not the object's"
    assert found > 100 and rewrites > 100, (found, missing, rewrites)


def test_deleted_and_evicted_objects_are_not_read_from_the_index(start_server: Any) -> None:
    """A delete in one client is seen by the next get of another; objects evicted for
    room, then their memory reused, come back from disk with their own bytes."""
    server = start_server("--memory", "4M", durability="sync")
    with server.client() as writer, server.client() as reader:
        small = writer.put(b"delete me")
        assert reader.get(small) == b"delete me"
        writer.delete(small)
        with pytest.raises(ObjectNotFound):
            reader.get(small)
        ids = [writer.put(payload_for(bytes([n]) * 20, 60_000)) for n in range(200)]
        assert writer.info().evictions > 0  # 12 MB through a 4 MiB arena
        for n, object_id in enumerate(ids):
            assert reader.get(object_id) == payload_for(bytes([n]) * 20, 60_000)


def test_a_restarted_server_is_asked_not_its_predecessors_index(start_server: Any) -> None:
    """After a SIGKILL and a restart without durability, the client's old mapping of the
    index still lists the object; the client must ask the new server (which has nothing)."""
    server = start_server(durability="none")
    with server.client() as store:
        object_id = store.put(b"gone with the server")
        assert store.get(object_id) == b"gone with the server"
        server.kill()
        start_server(durability="none", data_dir=server.data_dir, socket_path=server.socket_path)
        with pytest.raises(ObjectNotFound):
            store.get(object_id)
        assert store.get(store.put(b"new")) == b"new"


def test_index_off_or_full_only_costs_calls(start_server: Any) -> None:
    """With --index-slots 0 there is no index; with 16 slots most objects do not fit.
    Gets are right either way."""
    off = start_server("--index-slots", "0")
    with off.client() as store:
        object_id = store.put(b"no index")
        assert store.get(object_id) == b"no index"
        assert store._route().colocated.index is None
        assert not store._grpc.call("Info", pb.InfoRequest()).HasField("object_index")
    tiny = start_server("--index-slots", "16")
    with tiny.client() as store:
        ids = [store.put(str(n).encode()) for n in range(100)]
        assert [store.get(object_id) for object_id in ids] == [str(n).encode() for n in range(100)]


def test_probing_and_backward_shift_against_a_model(tmp_path: Any) -> None:
    """The server's table and the client's reader agree with a dict through random
    publishes and withdrawals in a 64-slot table where IDs collide constantly."""
    prefix = f"improvstore-test-{os.getpid()}-"
    arena = Arena(prefix, 4 << 20)
    index = ObjectIndex(prefix + "index", 64, 1 << 16, prefix, views=False)
    try:
        reader = IndexReader(index.layout(), SegmentMaps())
        rng = random.Random(3)
        model: dict[bytes, bytes] = {}
        regions = {}
        for _ in range(3000):
            if model and (len(model) > 40 or rng.random() < 0.45):
                object_id = rng.choice(sorted(model))
                index.withdraw(object_id)
                arena.free(regions.pop(object_id))
                del model[object_id]
            else:
                object_id, data = rng.randbytes(20), rng.randbytes(rng.randrange(1, 300))
                region = arena.allocate(len(data))
                region.view()[:] = data
                index.publish(object_id, pb.ObjectMeta(id=object_id, size=len(data)), region)
                regions[object_id] = region
                model[object_id] = data
            for object_id, data in model.items():
                found = reader.read(object_id)
                assert found is None or found[1] == data  # None: it did not fit in 16 probes
            assert reader.read(rng.randbytes(20)) is None
        listed = sum(reader.read(object_id) is not None for object_id in model)
        assert listed == len(index) and listed >= len(model) // 2
    finally:
        index.close()
        arena.close()


def test_each_slot_carries_its_own_objects_layout() -> None:
    """Objects of one size published one after another, with and without an array
    header, in other encodings and shapes, each read back with exactly their own layout
    (the server reuses the last layout it encoded when the next object shares it)."""
    prefix = f"improvstore-test-{os.getpid()}-"
    arena = Arena(prefix, 1 << 20)
    index = ObjectIndex(prefix + "index", 64, 1 << 16, prefix, views=False)
    try:
        reader = IndexReader(index.layout(), SegmentMaps())
        column = pb.ArrayLayout(dtype="<f4", shape=[12])
        row = pb.ArrayLayout(dtype="<f4", shape=[3, 4])
        layouts = [
            pb.ObjectMeta(size=48, encoding=pb.ENCODING_NDARRAY, array=column),
            pb.ObjectMeta(size=48, encoding=pb.ENCODING_NDARRAY, array=column),
            pb.ObjectMeta(size=48, encoding=pb.ENCODING_NDARRAY, array=row),
            pb.ObjectMeta(size=48, encoding=pb.ENCODING_RAW),
            pb.ObjectMeta(size=48, encoding=pb.ENCODING_PICKLE),
            pb.ObjectMeta(size=48, encoding=pb.ENCODING_NDARRAY),
            pb.ObjectMeta(size=48, encoding=pb.ENCODING_NDARRAY, array=pb.ArrayLayout()),
            pb.ObjectMeta(size=48, encoding=pb.ENCODING_NDARRAY, array=column),
        ]
        published = []
        for layout in layouts:
            meta = pb.ObjectMeta(id=os.urandom(20))
            meta.MergeFrom(layout)
            region = arena.allocate(meta.size)
            index.publish(meta.id, meta, region)
            published.append((meta.id, layout))
        for object_id, layout in published:
            found = reader.read(object_id)
            assert found is not None
            assert found[0] == layout and found[0].HasField("array") == layout.HasField("array")
    finally:
        index.close()
        arena.close()


def test_large_objects_are_read_in_place_and_kept_while_viewed(start_server: Any) -> None:
    """A large object is read in place with no call. Deleted meanwhile, its memory is
    not reused while the view lives, however much is put after it; once the view is
    garbage, the memory is reused."""
    server = start_server("--memory", "16M", durability="none")
    with server.client() as writer, server.client() as reader:
        object_id = writer.put(np.full(2 << 20, 7, dtype=np.uint8))
        reader.get(writer.put(b"open the lane"))
        before = requests_served(reader)
        view = reader.get(object_id)
        again = reader.get(object_id)
        assert requests_served(reader) == before + 1  # only the Info call itself
        assert view.nbytes == 2 << 20 and not view.flags.writeable
        writer.delete(object_id)
        with pytest.raises(ObjectNotFound):
            reader.get(object_id)
        for n in range(40):  # 40 MiB through a 16 MiB arena, each freed after its put
            writer.delete(writer.put(np.full(1 << 20, n, dtype=np.uint8)))
        assert view.min() == view.max() == 7
        held = writer.info().arena_used
        assert writer.info().arena_pinned >= 2 << 20  # kept for the reader
        del view, again
        gc.collect()
        writer.delete(writer.put(np.zeros(1 << 20, dtype=np.uint8)))  # reclaims on allocate
        assert writer.info().arena_used <= held - (2 << 20)


def hold_in_place(address: str, object_id: bytes, ready: Any) -> None:
    """Child: read a large object in place, report its sum, then hang until killed."""
    store = StoreClient(address)
    store.get(store.put(b"open the lane"))
    view = store.get(ObjectID(object_id))
    ready.send(int(view.sum()))
    time.sleep(600)


def test_a_killed_readers_pins_are_dropped(start_server: Any) -> None:
    """A client SIGKILLed while it reads a deleted object in place: its session ends, its
    pin table with it, and the memory is freed."""
    server = start_server("--memory", "16M", durability="none")
    with server.client() as store:
        object_id = store.put(np.ones(4 << 20, dtype=np.uint8))
        parent, child = SPAWN.Pipe()
        process = SPAWN.Process(target=hold_in_place,
                                args=(server.unix_address, object_id.binary(), child))
        process.start()
        assert parent.recv() == 4 << 20
        store.delete(object_id)
        store.delete(store.put(b"x" * 100_000))
        pinned = store.info().arena_used
        assert pinned >= 4 << 20
        os.kill(process.pid, signal.SIGKILL)
        process.join(10)
        deadline = time.monotonic() + 10
        while store.info().arena_used > pinned - (4 << 20) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.info().arena_used <= pinned - (4 << 20)


def test_views_beyond_the_pin_table_are_leased_instead(server: Any) -> None:
    """A client holding more in-place views than its pin table has slots gets the next ones
    from the server, with leases: as many views as it likes, each right, and every
    pin and lease given back when they are garbage."""
    with server.client() as store:
        object_id = store.put(np.arange(1 << 14, dtype=np.int32))  # 64 KiB: read in place
        slots = store._route().transport.session().opened.pin_slots
        baseline = store.info()
        views = [store.get(object_id) for _ in range(slots + 50)]
        assert all(view[-1] == (1 << 14) - 1 for view in views)
        assert store.info().requests > baseline.requests + 50  # the last 50 asked
        del views
        gc.collect()
        deadline = time.monotonic() + 10
        while store.info().arena_pinned != baseline.arena_pinned:
            assert time.monotonic() < deadline, "leases were not given back"
            time.sleep(0.05)
        before = requests_served(store)
        assert store.get(object_id)[-1] == (1 << 14) - 1  # pinned again: slots came back
        assert requests_served(store) == before + 1
        store.delete(object_id)


def test_many_views_of_deleted_objects_are_kept_then_reclaimed_when_needed(
    start_server: Any,
) -> None:
    """More regions kept for readers than an allocation looks at each time: they stay
    intact while viewed, however much passes through the arena, and once the views are
    gone an allocation that finds the arena full takes them back."""
    server = start_server("--memory", "16M", durability="none")
    with server.client() as writer, server.client() as reader:
        reader.get(writer.put(b"open the lane"))
        ids = [writer.put(np.full(512 << 10, n, dtype=np.uint8)) for n in range(12)]
        views = [reader.get(object_id) for object_id in ids]
        for object_id in ids:
            writer.delete(object_id)
        for n in range(40):  # 20 MiB more through the arena while 6 MiB waits for readers
            writer.delete(writer.put(np.full(512 << 10, 100 + n, dtype=np.uint8)))
        filler: list[ObjectID] = []
        with pytest.raises(StoreFull):  # the 6 MiB viewed stays taken when the arena fills
            for n in range(16):
                filler.append(writer.put(np.full(1 << 20, 200 + n, dtype=np.uint8)))
        assert all(view.min() == view.max() == n for n, view in enumerate(views))
        for object_id in filler:
            writer.delete(object_id)
        del views
        gc.collect()
        # 12 MiB fits in 16 MiB only once the 6 MiB kept for the reader is taken back.
        kept = [writer.put(np.zeros(1 << 20, dtype=np.uint8)) for _ in range(12)]
        assert len(kept) == 12
