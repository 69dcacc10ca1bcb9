"""The store's core in-process: the object table, residency (LRU eviction), sessions, and a
real Store over a temporary data directory and real shared memory.

Every test removes what it made: its /dev/shm files are checked to be gone, and its data
directories are temporary.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import tempfile
from collections.abc import Iterator
from itertools import count

import crc32c
import pytest

from improv_store.protocol import MAX_IDS_PER_MESSAGE, SHM_DIR, Code
from improv_store.service.arena import Arena, remove_stale_segments
from improv_store.service.config import ServerConfig
from improv_store.service.errors import StoreError
from improv_store.service.index import ObjectIndex
from improv_store.service.locality import store_prefix
from improv_store.service.objects import ObjectTable, StoredObject
from improv_store.service.residency import ResidentSet
from improv_store.service.sessions import Sessions
from improv_store.service.store import Store
from improv_store.v1 import store_pb2 as pb

MiB = 1 << 20
ARENA = 1 * MiB  # the smallest arena of one segment
QUARTER = ARENA // 4  # four objects fill it
STORE_MEMORY = 4 * MiB  # the smallest memory a Store takes
NEVER = 3600.0

_sequences = count(1)


def shm_files(prefix: str) -> list[str]:
    return sorted(name for name in os.listdir(SHM_DIR) if name.startswith(prefix))


@pytest.fixture
def shm_prefix() -> Iterator[str]:
    """A /dev/shm name prefix of this test's own; nothing may be left under it."""
    prefix = f"improvstore-core-{os.getpid()}-{os.urandom(3).hex()}-"
    yield prefix
    left = shm_files(prefix)
    remove_stale_segments(prefix)
    assert left == []


@pytest.fixture
def arena(shm_prefix: str) -> Iterator[Arena]:
    arena = Arena(shm_prefix, ARENA)
    yield arena
    arena.close()


def stored(size: int = QUARTER, name: str = "") -> StoredObject:
    """A stored object's record, its payload not yet anywhere."""
    meta = pb.ObjectMeta(id=os.urandom(20), name=name, size=size, sequence=next(_sequences))
    return StoredObject.of(meta)


def resident(objects: ResidentSet, size: int = QUARTER) -> StoredObject:
    obj = stored(size)
    objects.admit(obj, objects.allocate(size), obj.meta)
    return obj


def code_of(error: pytest.ExceptionInfo[StoreError]) -> Code:
    return error.value.code


# -- the object table -----------------------------------------------------------------


def test_the_table_finds_objects_by_id_and_the_newest_by_name() -> None:
    table = ObjectTable()
    older, other, newer = stored(10, "a"), stored(20, "b"), stored(30, "a")
    for obj in (older, other, newer):
        table.add(obj, obj.name)
    assert len(table) == 3 and table.total_bytes == 60
    assert older.object_id in table and table.by_id(other.object_id) is other
    assert table.newest("a") is newer and table.newest("nothing") is None
    assert table.ids_named("a") == [older.object_id, newer.object_id]
    assert table.remove(newer.object_id) is newer
    assert table.newest("a") is older and table.total_bytes == 30
    table.remove(older.object_id)
    assert table.ids_named("a") == [] and table.newest("a") is None
    assert table.by_id(older.object_id) is None


def test_the_table_pages_by_prefix_in_sequence_order() -> None:
    table = ObjectTable()
    objects = [stored(1, name) for name in ("x/1", "y/1", "x/2", "x/3", "")]
    for obj in objects:
        table.add(obj, obj.name)
    page, more = table.page("x/", 0, 2)
    assert [obj.name for obj in page] == ["x/1", "x/2"] and more
    page, more = table.page("x/", page[-1].sequence, 2)
    assert [obj.name for obj in page] == ["x/3"] and not more
    assert len(table.page("", 0, 100)[0]) == 5


def test_a_snapshot_copy_keeps_the_table_in_sequence_order() -> None:
    """A follower's resync adds older objects after newer ones, and for a while may hold
    another store's object at the same sequence: orders stay sorted, removal takes the
    right one."""
    table = ObjectTable()
    older, newer, named_new = stored(1, "n"), stored(1, "n"), stored(1, "n")
    twin = StoredObject.of(pb.ObjectMeta(id=os.urandom(20), name="t", size=1,
                                         sequence=newer.sequence))
    for obj in (newer, named_new, older, twin):
        table.add(obj, obj.name)
    assert [obj.sequence for obj in table.page("", 0, 10)[0]] == sorted(
        obj.sequence for obj in (newer, named_new, older, twin))
    assert table.ids_named("n") == [older.object_id, newer.object_id, named_new.object_id]
    assert table.newest("n") is named_new
    table.remove(twin.object_id)
    assert newer in table.page("", 0, 10)[0] and twin not in table.page("", 0, 10)[0]
    assert table.newest_sequence == named_new.sequence


@pytest.mark.parametrize(("count", "page_sizes"), [(50, (1, 7, 1000)), (8000, (300, 1000))])
def test_table_pages_resume_after_removals_and_match_prefixes_exactly(
    count: int, page_sizes: tuple[int, ...]
) -> None:
    """Both ways of finding a prefix's objects (few names: merged from the name index;
    many: the sequence order filtered) and the compaction of removed entries."""
    table = ObjectTable()
    names = ["a", "ab", "abc", "b", "", "a\U0010ffff", "a\U0010ffffz", "\U0010ffff", "é"]
    # Mostly distinct names (8000 of them make "a" a prefix of too many names to merge),
    # some shared.
    objects = [stored(1, f"{names[i % len(names)]}{i if i % 5 else i % 7}") for i in range(count)]
    for obj in objects:
        table.add(obj, obj.name)
    for obj in objects[::3]:
        table.remove(obj.object_id)
    kept = [obj for obj in objects if obj.object_id in table]
    for prefix in ["", "a", "ab", "a\U0010ffff", "\U0010ffff", "é", "none"]:
        for page_size in page_sizes:
            listed, after, more = [], 0, True
            while more:
                page, more = table.page(prefix, after, page_size)
                listed.extend(page)
                after = page[-1].sequence if page else after
            assert listed == [obj for obj in kept if obj.name.startswith(prefix)]
    assert table.page("", objects[-1].sequence, 10) == ([], False)


# -- residency --------------------------------------------------------------------------


def test_eviction_takes_the_least_recently_used_durable_unpinned_object(arena: Arena) -> None:
    objects = ResidentSet(arena, evictable=True)
    touched, pinned, committing, oldest = (resident(objects) for _ in range(4))
    objects.touch(touched)
    objects.pin(pinned)
    committing.committing = True  # not in LMDB yet: it has no other copy
    first = objects.allocate(QUARTER)
    assert oldest.region is None and objects.evictions == 1
    second = objects.allocate(QUARTER)
    assert touched.region is None and objects.evictions == 2
    with pytest.raises(StoreError) as full:
        objects.allocate(QUARTER)
    assert code_of(full) == Code.RESOURCE_EXHAUSTED
    assert f"{QUARTER} bytes needed" in full.value.message
    assert pinned.region is not None and committing.region is not None
    assert objects.pinned_bytes == QUARTER
    objects.unpin(pinned)
    assert objects.pinned_bytes == 0
    third = objects.allocate(QUARTER)
    assert pinned.region is None and committing.region is not None
    assert len(objects) == 1
    for region in (first, second, third):
        objects.free(region)


def test_a_memory_only_store_evicts_nothing(arena: Arena) -> None:
    objects = ResidentSet(arena, evictable=False)
    kept = [resident(objects) for _ in range(4)]
    with pytest.raises(StoreError) as full:
        objects.allocate(1)
    assert code_of(full) == Code.RESOURCE_EXHAUSTED
    assert objects.evictions == 0 and all(obj.region is not None for obj in kept)


def test_a_deleted_object_keeps_its_memory_while_pinned_or_committing(arena: Arena) -> None:
    objects = ResidentSet(arena, evictable=True)
    pinned, committing = resident(objects), resident(objects)
    objects.pin(pinned)
    committing.committing = True
    for obj in (pinned, committing):
        obj.deleted = True
        objects.forget(obj)
    assert arena.used == 2 * QUARTER and len(objects) == 0
    objects.unpin(pinned)
    assert pinned.region is None and arena.used == QUARTER
    committing.committing = False  # what the store does once LMDB has it
    objects.release_if_unused(committing)
    assert committing.region is None and arena.used == 0


def test_the_index_lists_exactly_the_resident_objects(arena: Arena, shm_prefix: str) -> None:
    index = ObjectIndex(f"{shm_prefix}index", 16, 64 << 10, shm_prefix, views=True)
    try:
        objects = ResidentSet(arena, evictable=True, index=index)
        listed = [resident(objects) for _ in range(4)]
        assert len(index) == 4
        region = objects.allocate(QUARTER)  # evicts the oldest: unlisted first
        assert len(index) == 3 and listed[0].region is None
        listed[1].deleted = True
        objects.forget(listed[1])
        assert len(index) == 2
        objects.free(region)
    finally:
        index.close()


# -- sessions ----------------------------------------------------------------------------


def test_a_lease_is_released_only_by_its_own_session(arena: Arena) -> None:
    sessions = Sessions()
    mine, theirs = sessions.open(), sessions.open()
    obj = stored()
    obj.region = arena.allocate(QUARTER)
    handle = sessions.lease(mine, obj)
    assert (handle.segment, handle.offset, handle.length) == (
        obj.region.segment.name, obj.region.offset, QUARTER)
    with pytest.raises(StoreError) as foreign:
        sessions.release(theirs, [handle.lease_id])
    assert code_of(foreign) == Code.PERMISSION_DENIED
    with pytest.raises(StoreError) as unknown:
        sessions.release(mine, [handle.lease_id, 999_999])
    assert code_of(unknown) == Code.NOT_FOUND
    assert sessions.release(mine, [handle.lease_id, handle.lease_id]) == [obj]  # once
    with pytest.raises(StoreError) as again:
        sessions.release(mine, [handle.lease_id])
    assert code_of(again) == Code.NOT_FOUND
    arena.free(obj.region)


def test_closing_a_session_hands_back_its_leases_and_creates(arena: Arena) -> None:
    sessions = Sessions()
    session = sessions.open()
    obj = stored()
    obj.region = arena.allocate(QUARTER)
    sessions.lease(session, obj)
    filling = arena.allocate(QUARTER)
    sessions.add_create(session, pb.ObjectSpec(), filling, False)
    assert sessions.pending_bytes == QUARTER and len(sessions) == 1
    assert sessions.close(session.session_id) == ([obj], [filling])
    assert session.ended.is_set() and sessions.pending_bytes == 0 and len(sessions) == 0
    assert sessions.close(session.session_id) == ([], [])
    with pytest.raises(StoreError) as gone:
        sessions.get(session.session_id)
    assert code_of(gone) == Code.FAILED_PRECONDITION
    for region in (obj.region, filling):
        arena.free(region)


def test_a_create_is_sealed_only_by_its_session_with_the_handle_issued(arena: Arena) -> None:
    sessions = Sessions()
    mine, theirs = sessions.open(), sessions.open()
    region = arena.allocate(QUARTER)
    handle = sessions.add_create(mine, pb.ObjectSpec(name="a"), region, False).handle()
    with pytest.raises(StoreError) as foreign:
        sessions.take_create(theirs, handle)
    assert code_of(foreign) == Code.PERMISSION_DENIED
    forged = pb.ShmHandle()
    forged.CopyFrom(handle)
    forged.offset += 64
    with pytest.raises(StoreError) as mismatch:
        sessions.take_create(mine, forged)
    assert code_of(mismatch) == Code.INVALID_ARGUMENT
    pending = sessions.take_create(mine, handle)
    assert pending.region is region and pending.spec is not None and pending.spec.name == "a"
    with pytest.raises(StoreError) as taken:
        sessions.take_create(mine, handle)
    assert code_of(taken) == Code.NOT_FOUND
    sessions.end_all()
    assert mine.ended.is_set() and theirs.ended.is_set()
    arena.free(region)


# -- the store --------------------------------------------------------------------------


@pytest.fixture
def data_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="core-store-") as directory:
        yield directory
        assert shm_files(store_prefix(directory)) == []


@contextlib.contextmanager
def open_store(data_dir: str, durability: str, **options: object) -> Iterator[Store]:
    options = {"memory": STORE_MEMORY, "wal_size": MiB, **options}
    store = Store(ServerConfig(data_dir=data_dir, durability=durability, **options))
    try:
        yield store
    finally:
        store.close()


def put(store: Store, payload: bytes, name: str = "", **spec: object) -> pb.ObjectMeta:
    return store.put(pb.ObjectSpec(name=name, **spec), payload).meta


def read(store: Store, ref: pb.ObjectRef) -> bytes:
    with store.read(store.get(ref)) as view:
        return bytes(view)


def by_id(object_id: bytes) -> pb.ObjectRef:
    return pb.ObjectRef(id=object_id)


def arena_used(store: Store) -> int:
    return store.info().arena.used


@pytest.mark.parametrize("durability", ["none", "async", "sync"])
def test_put_get_delete(data_dir: str, durability: str) -> None:
    with open_store(data_dir, durability) as store:
        older = put(store, b"first", "a")
        newer = put(store, b"second", "a")
        assert read(store, by_id(older.id)) == b"first"
        assert read(store, pb.ObjectRef(name="a")) == b"second"
        assert newer.sequence == older.sequence + 1 and newer.crc32c == crc32c.crc32c(b"second")
        deleted, _ = store.delete(pb.ObjectRef(name="a"))
        assert deleted == [older.id, newer.id]
        with pytest.raises(StoreError) as gone:
            store.get(by_id(older.id))
        assert code_of(gone) == Code.NOT_FOUND
        info = store.info()
        assert info.object_count == 0 and info.last_sequence == newer.sequence + 2


def test_a_refused_object_gives_its_memory_back(data_dir: str) -> None:
    with open_store(data_dir, "none") as store:
        object_id = os.urandom(20)
        region = store.reserve(pb.ObjectSpec(id=object_id), QUARTER)
        put(store, b"x", id=object_id)  # the ID is taken while the region is filled
        used = arena_used(store)
        with pytest.raises(StoreError) as exists:
            store.insert(pb.ObjectSpec(id=object_id), region, crc32c.crc32c(bytes(QUARTER)))
        assert code_of(exists) == Code.ALREADY_EXISTS
        assert arena_used(store) == used - QUARTER
        with pytest.raises(StoreError) as corrupt:
            put(store, b"payload", crc32c=1)
        assert code_of(corrupt) == Code.DATA_LOSS
        assert arena_used(store) == used - QUARTER and store.info().object_count == 1


def test_a_deleted_object_keeps_its_memory_until_its_reader_is_done(data_dir: str) -> None:
    with open_store(data_dir, "none") as store:
        meta = put(store, b"kept while read")
        used = arena_used(store)
        with store.read(store.get(by_id(meta.id))) as view:
            store.delete(by_id(meta.id))
            assert bytes(view) == b"kept while read" and arena_used(store) == used
        assert arena_used(store) < used


def test_a_memory_only_store_refuses_when_full_and_takes_again_after_a_delete(
    data_dir: str,
) -> None:
    with open_store(data_dir, "none") as store:
        metas = [put(store, bytes(MiB)) for _ in range(4)]
        with pytest.raises(StoreError) as full:
            put(store, bytes(MiB))
        assert code_of(full) == Code.RESOURCE_EXHAUSTED
        assert "shared memory full" in full.value.message
        store.delete(by_id(metas[0].id))
        put(store, bytes(MiB))
        assert store.info().arena.evictions == 0


@pytest.mark.parametrize("durability", ["async", "sync"])
def test_a_full_arena_evicts_committed_objects_which_reload_from_disk(
    data_dir: str, durability: str
) -> None:
    # The async interval never ends here: room comes from committing on demand.
    with open_store(data_dir, durability, commit_interval=NEVER,
                    log_apply_interval=NEVER) as store:
        payloads = [os.urandom(MiB) for _ in range(6)]
        metas = [put(store, payload) for payload in payloads]
        assert store.info().arena.evictions >= 2
        assert store.find(metas[0].id).region is None  # the least recently used went first
        assert read(store, by_id(metas[0].id)) == payloads[0]  # loaded back
        assert [read(store, by_id(m.id)) for m in metas] == payloads


def test_a_leased_object_is_never_evicted_and_its_lease_ends_with_the_session(
    data_dir: str,
) -> None:
    with open_store(data_dir, "async", commit_interval=NEVER) as store:
        opened, ended = store.open_session()
        other, _ = store.open_session()
        leased = store.get(by_id(put(store, bytes(MiB)).id))
        handle = store.lease(opened.session_id, leased)
        for _ in range(5):
            put(store, bytes(MiB))
        assert leased.region is not None and store.info().arena.pinned == MiB
        with pytest.raises(StoreError) as foreign:
            store.release(other.session_id, [handle.lease_id])
        assert code_of(foreign) == Code.PERMISSION_DENIED
        store.close_session(opened.session_id)
        assert ended.is_set() and store.info().arena.pinned == 0
        put(store, bytes(MiB))
        put(store, bytes(MiB))
        assert leased.region is None  # unpinned, it was evicted like any other


def test_a_put_deleted_before_its_commit_never_reaches_the_disk(data_dir: str) -> None:
    with open_store(data_dir, "async", commit_interval=NEVER) as store:
        before = arena_used(store)
        meta = put(store, bytes(MiB))
        store.delete(by_id(meta.id))
        assert arena_used(store) == before  # its payload will never be read: freed at once
    with open_store(data_dir, "async") as store:
        assert store.info().object_count == 0
        assert store.info().last_sequence == meta.sequence + 1


def test_a_created_region_becomes_an_object_when_its_session_seals_it(data_dir: str) -> None:
    with open_store(data_dir, "sync") as store:
        opened, _ = store.open_session()
        other, _ = store.open_session()
        session = opened.session_id
        handle = store.create(session, pb.ObjectSpec(name="made"), 5, replace=False)
        with open(os.path.join(SHM_DIR, handle.segment), "r+b") as segment, \
                mmap.mmap(segment.fileno(), 0) as mapping:
            mapping[handle.offset:handle.offset + 5] = b"hello"
        with pytest.raises(StoreError) as foreign:
            store.seal(other.session_id, handle)
        assert code_of(foreign) == Code.PERMISSION_DENIED
        sealed = store.seal(session, handle)
        assert sealed.meta.crc32c == crc32c.crc32c(b"hello")
        assert read(store, pb.ObjectRef(name="made")) == b"hello"
        used = arena_used(store)
        aborted = store.create(session, pb.ObjectSpec(), QUARTER, replace=False)
        store.abort(session, aborted)
        assert arena_used(store) == used


def test_a_sync_store_finds_every_acknowledged_object_after_a_restart(data_dir: str) -> None:
    payloads = [os.urandom(size) for size in (10, 1000, 300 << 10, 64)]  # logged and not
    with open_store(data_dir, "sync", log_apply_interval=NEVER) as store:
        metas = [put(store, payload, f"n{index}") for index, payload in enumerate(payloads)]
        store.delete(by_id(metas[-1].id))
        last = store.info().last_sequence
    with open_store(data_dir, "sync") as store:
        info = store.info()
        assert info.object_count == 3 and info.last_sequence == last
        assert [read(store, by_id(m.id)) for m in metas[:3]] == payloads[:3]
        with pytest.raises(StoreError) as gone:
            store.get(by_id(metas[-1].id))
        assert code_of(gone) == Code.NOT_FOUND


def test_a_closed_store_is_unavailable(data_dir: str) -> None:
    with open_store(data_dir, "none") as store:
        meta = put(store, b"x")
        store.begin_shutdown()
        with pytest.raises(StoreError) as closing:
            store.get(by_id(meta.id))
        assert code_of(closing) == Code.UNAVAILABLE



def test_a_crowded_name_keeps_every_event_and_answer_within_the_limit(data_dir: str) -> None:
    """Replacing a name with more objects than a message may list deletes the oldest first,
    each with its own DELETE event; the REPLACE lists the rest. Every object goes once."""
    crowd = MAX_IDS_PER_MESSAGE + 3
    with open_store(data_dir, "none", event_retention=2 * crowd, memory=64 * MiB) as store:
        ids = [store.put(pb.ObjectSpec(name="crowded"), b"", wait=False).meta.id
               for _ in range(crowd)]
        last = store.info().last_sequence
        replaced = store.put(pb.ObjectSpec(name="crowded"), b"new", replace=True)
        assert replaced.replaced_ids == ids[3:]
        subscription = store.subscribe("", last + 1)
        events = list(itertools.islice(subscription, 4))
        subscription.close()
        assert [event.type for event in events] == [pb.EVENT_TYPE_DELETE] * 3 + [
            pb.EVENT_TYPE_REPLACE]
        assert [event.meta.id for event in events[:3]] == ids[:3]
        assert list(events[3].replaced_ids) == ids[3:]
        assert store.info().object_count == 1
        assert store.get(pb.ObjectRef(name="crowded")).object_id == replaced.meta.id
