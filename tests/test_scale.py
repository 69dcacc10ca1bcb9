"""Scale: listing stays exact while others write, prefix listing over many names, restart with
tens of thousands of objects, and bulk delete (DeleteMatching) with its events.

Servers are real subprocesses on LMDB in temporary directories (conftest). Where the
behaviour depends on real concurrency, the writers are separate processes (spawn) that
log each change after the server acknowledged it, so the test knows, for any moment,
which changes had certainly happened and which had certainly not.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import ServerProcess
from test_lane import RawLane
from test_subscribe import Collector

from improv_store.client import (
    InvalidRequest,
    ObjectID,
    ObjectInfo,
    ObjectNotFound,
    StoreClient,
)
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

SPAWN = multiprocessing.get_context("spawn")
StartServer = Callable[..., ServerProcess]
Code = grpc.StatusCode

CALL_TIMEOUT = 30.0
PROGRESS_TIMEOUT = 60.0  # bound on waiting for writers to make progress (hang guard only)
MAX_PAGE = 1000  # ListRequest: at most this many objects per page


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["lane", "grpc"])
def lane(request: pytest.FixtureRequest) -> bool:
    """Whether the test's client takes the local lane or plain gRPC."""
    return request.param


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[store_pb2_grpc.StoreServiceStub]:
    """A raw gRPC stub on ``server``'s unix socket, for requests the client does not make."""
    with grpc.insecure_channel(server.unix_address) as channel:
        yield store_pb2_grpc.StoreServiceStub(channel)


def listing(store: StoreClient, prefix: str = "", page_size: int = MAX_PAGE) -> list[ObjectInfo]:
    """Every object ``list`` returns for ``prefix``, paged ``page_size`` at a time."""
    return list(store.list(prefix, page_size=page_size))


def ids_of(infos: list[ObjectInfo]) -> list[ObjectID]:
    return [info.id for info in infos]


def assert_increasing(infos: list[ObjectInfo]) -> None:
    """Strictly increasing sequences: sequence order, and nothing listed twice."""
    bad = [(a.sequence, b.sequence) for a, b in itertools.pairwise(infos)
           if a.sequence >= b.sequence]
    assert not bad, f"{len(bad)} pairs out of sequence order, first {bad[:5]}"


def expect_status(code: grpc.StatusCode, call: Callable[[], Any]) -> None:
    """``call`` fails with ``code``."""
    with pytest.raises(grpc.RpcError) as failure:
        call()
    error = failure.value
    assert error.code() == code, f"expected {code.name}, got {error.code().name}: {error.details()}"


# -- 1. listing under concurrent puts and deletes --------------------------------------------


def churn(
    address: str, ledger: str, writer: int, doomed: list[str], counters: Any, purge: Any,
    stop: Any,
) -> None:
    """Child process: put new objects, deleting every third of its own one put later, until
    ``stop``; once ``purge`` is set, also delete the ``doomed`` objects, 8 after each put.

    ``counters`` are shared: puts made, doomed objects deleted. Each change is logged to
    ``ledger`` ("put ID name" or "del ID") only after the server acknowledged it, and the
    loop ends between changes, so at exit the ledger is complete.
    """
    puts, purged = counters
    own_doomed: list[ObjectID] = []
    with StoreClient(address) as store, open(ledger, "w") as out:
        index = 0
        while not stop.is_set():
            name = f"scan_w{writer}_{index}" if index % 2 else f"grp_{index % 5}"
            object_id = store.put(index.to_bytes(4, "little"), name=name)
            out.write(f"put {object_id.hex()} {name}\n")
            burst = [ObjectID.from_hex(h) for h in doomed[-8:]] if purge.is_set() else []
            del doomed[len(doomed) - len(burst):]
            for victim in own_doomed[:1] + burst:
                assert store.delete(victim) == [victim]
                out.write(f"del {victim.hex()}\n")
            out.flush()
            own_doomed = own_doomed[1:] + [object_id] * (index % 3 == 0)
            for counter, step in ((puts, 1), (purged, len(burst))):
                with counter.get_lock():
                    counter.value += step
            index += 1


@dataclass
class Changes:
    """What the writers' ledgers say was acknowledged: puts (ID -> name) and deletes."""

    puts: dict[ObjectID, str] = field(default_factory=dict)
    deleted: set[ObjectID] = field(default_factory=set)

    @classmethod
    def read(cls, ledgers: list[Path]) -> Changes:
        """The complete lines of the ledgers as they are now."""
        changes = cls()
        for ledger in ledgers:
            text = ledger.read_text() if ledger.exists() else ""
            for line in text[: text.rfind("\n") + 1].splitlines():
                kind, object_hex, *name = line.split(" ", 2)
                if kind == "put":
                    changes.puts[ObjectID.from_hex(object_hex)] = name[0]
                else:
                    changes.deleted.add(ObjectID.from_hex(object_hex))
        return changes


def wait_for_count(counter: Any, count: int, writers: list[Any]) -> None:
    """Wait until a shared counter of the writers reaches ``count`` (hang guard, no timing)."""
    deadline = time.monotonic() + PROGRESS_TIMEOUT
    while counter.value < count:
        dead = [w.exitcode for w in writers if w.exitcode is not None]
        assert not dead, f"a writer exited with {dead}"
        assert time.monotonic() < deadline, f"writers stuck at {counter.value}, want {count}"
        time.sleep(0.002)


@pytest.mark.parametrize(
    ("prefix", "lane"),
    [("", True), ("scan_", False), ("grp_", True)],
    ids=["all-lane", "distinct-names-grpc", "shared-names-lane"],
)
def test_listing_under_concurrent_puts_and_deletes(
    start_server: StartServer, tmp_path: Path, prefix: str, lane: bool
) -> None:
    """Two writer processes put objects and delete pre-existing and new ones while a client
    pages through ``list(prefix)`` (all; a prefix of many distinct names; one of five names
    shared by many objects) 50 at a time, waiting between pages until the writers made more
    changes, and deleting two thirds of the objects between its second and fourth pages:
    nothing is listed twice, in sequence order; every object that existed for the whole
    listing is listed; nothing deleted before it began is; everything listed was stored, with
    its name; at rest, the listing is exactly what the ledgers say remains."""
    server = start_server()
    count, page_size, writers = 6000, 50, 2
    names = [(f"scan_pre{i}", f"grp_{i % 5}", "")[i % 3] for i in range(count)]
    with server.client() as store:
        pre_ids = store.put_many([i.to_bytes(4, "little") for i in range(count)],
                                 [name or None for name in names])
        pre = {info.id: info for info in listing(store)}
    assert list(pre) == pre_ids
    # Two thirds go, between the listing's second and fourth pages: a mass delete mid-listing.
    doomed = random.Random(1).sample([i.hex() for i in pre_ids], 2 * count // 3)
    ledgers = [tmp_path / f"ledger{w}" for w in range(writers)]
    puts, purged = SPAWN.Value("q", 0), SPAWN.Value("q", 0)
    purge, stop = SPAWN.Event(), SPAWN.Event()
    processes = [
        SPAWN.Process(target=churn, args=(server.unix_address, str(ledgers[w]), w,
                                          doomed[w::writers], (puts, purged), purge, stop))
        for w in range(writers)
    ]
    for process in processes:
        process.start()
    try:
        wait_for_count(puts, 20, processes)
        with server.client(lane=lane) as store:
            before = Changes.read(ledgers)
            listed: list[ObjectInfo] = []
            for info in store.list(prefix, page_size=page_size):
                listed.append(info)
                # More than were ever stored: pages repeat (a listing that would never end).
                assert len(listed) <= count + puts.value, "the listing goes round"
                pages, end_of_page = divmod(len(listed), page_size)
                if end_of_page == 0:
                    wait_for_count(puts, puts.value + 2 * writers, processes)
                    if pages == 2:
                        purge.set()
                    elif pages == 4:
                        wait_for_count(purged, len(doomed), processes)
            during = Changes.read(ledgers)
    finally:
        stop.set()
        for process in processes:
            process.join(30)
    assert [process.exitcode for process in processes] == [0] * writers
    after = Changes.read(ledgers)
    assert set(doomed) <= {object_id.hex() for object_id in during.deleted - before.deleted}

    listed_ids = ids_of(listed)
    assert len(set(listed_ids)) == len(listed_ids), "an object was listed twice"
    assert_increasing(listed)
    stored_names = {object_id: info.name for object_id, info in pre.items()} | after.puts
    unknown = [info for info in listed if info.id not in stored_names]
    assert not unknown, f"{len(unknown)} listed objects were never stored: {unknown[:3]}"
    assert all(info.name == stored_names[info.id] for info in listed)
    assert all(info.name.startswith(prefix) for info in listed)
    listed_by_id = {info.id: info for info in listed}
    changed = [i for i in set(pre) & set(listed_by_id) if pre[i] != listed_by_id[i]]
    assert not changed, f"metadata changed while listing: {changed[:3]}"
    existed_throughout = {
        object_id for object_id, name in stored_names.items()
        if name.startswith(prefix) and object_id not in after.deleted
        and (object_id in pre or object_id in before.puts)
    }
    missing = existed_throughout - set(listed_ids)
    assert not missing, f"{len(missing)} objects that existed throughout were not listed"
    resurrected = before.deleted & set(listed_ids)
    assert not resurrected, f"{len(resurrected)} objects deleted before the listing were listed"

    with server.client() as store:
        at_rest = listing(store, prefix)
    remaining = [object_id for object_id in stored_names if object_id not in after.deleted
                 and stored_names[object_id].startswith(prefix)]
    assert_increasing(at_rest)
    assert set(ids_of(at_rest)) == set(remaining)


# -- 2. prefix listing --------------------------------------------------------------------------

# Names that share prefixes with each other, unicode ones, and names several objects carry.
SPECIAL_NAMES = [
    "a", "ab", "abc", "abc", "abd", "abcd", "b", "probe", "probe_", "pro",
    "日本", "日本語", "日本語_1", "é", "é_1", "e", "\U0001f39e\ufe0f_frame", "ü/über",
    "dup", "dup", "dup", "dup", "dup", "dupe",
]
PREFIXES = [
    "probe_", "probe_99", "probe", "pro", "p", "x_", "x_acq_", "x_acq_1",
    "a", "ab", "abc", "abcd", "abcde", "b",
    "日本", "日本語", "日", "é", "e", "\U0001f39e", "ü/", "dup", "dupe", "", "nomatch_", "\x7f",
]


@dataclass
class Populated:
    """A store filled by one writer: IDs in put (hence sequence) order and their names."""

    ids: list[ObjectID]
    names: list[str]

    def matching(self, prefix: str) -> list[ObjectID]:
        """IDs whose name starts with ``prefix``, in sequence order."""
        return [object_id for object_id, name in zip(self.ids, self.names, strict=True)
                if name.startswith(prefix)]


def populate_prefixes(store: StoreClient) -> Populated:
    """20,000 objects: 1,000 named probe_*, SPECIAL_NAMES, unnamed ones and 18,000-odd others
    (most under x_), shuffled, so that each prefix's objects are spread through the sequence.
    Prefixes then match from a handful of names to most of the objects."""
    names = [f"probe_{i}" for i in range(1000)] + SPECIAL_NAMES
    others = 20_000 - len(names)
    names += [("x_cam0_", "x_acq_", "", "x_trace/", "p")[i % 5] + (str(i) if i % 5 != 2 else "")
              for i in range(others)]
    random.Random(2).shuffle(names)
    ids = store.put_many([i.to_bytes(4, "little") for i in range(len(names))],
                         [name or None for name in names])
    return Populated(ids, names)


def test_prefix_listing(server: ServerProcess, stub: store_pb2_grpc.StoreServiceStub) -> None:
    """Among 20,000 objects, ``list(prefix)`` returns exactly the objects whose name starts
    with the prefix, in sequence order, over either transport and whatever the page size:
    prefixes of one another, unicode, names several objects share, the empty prefix (every
    object, unnamed ones included) and prefixes that match nothing."""
    with server.client() as store:
        populated = populate_prefixes(store)
        for prefix in PREFIXES:
            assert ids_of(listing(store, prefix, 50)) == populated.matching(prefix), prefix
        assert len(populated.matching("probe_")) == 1001  # "probe_" itself is a name too
        everything = listing(store, "")
        assert ids_of(everything) == populated.ids
        assert_increasing(everything)
        assert [info.name for info in everything] == populated.names
        for page_size in (1, 7, 0, 999, 5000):
            assert ids_of(listing(store, "probe_9", page_size)) == populated.matching("probe_9")
    with server.client(lane=False) as store:
        assert ids_of(listing(store, "probe_", 13)) == populated.matching("probe_")
        assert ids_of(listing(store, "日本", 1)) == populated.matching("日本")
    # The page size asked for is a bound, and the server's own bound is 1,000.
    assert len(stub.List(pb.ListRequest(page_size=5000), timeout=CALL_TIMEOUT).objects) == MAX_PAGE
    assert len(stub.List(pb.ListRequest(), timeout=CALL_TIMEOUT).objects) == 100
    last = stub.List(pb.ListRequest(prefix="abc", page_size=3), timeout=CALL_TIMEOUT)
    assert [ObjectID(meta.id) for meta in last.objects] == populated.matching("abc")
    assert last.next_page_token == ""


def page_through(
    stub: store_pb2_grpc.StoreServiceStub, prefix: str, token: str, page_size: int
) -> list[ObjectID]:
    """The IDs of every page from ``token`` on."""
    ids: list[ObjectID] = []
    while True:
        page = stub.List(pb.ListRequest(prefix=prefix, page_size=page_size, page_token=token),
                         timeout=CALL_TIMEOUT)
        ids += [ObjectID(meta.id) for meta in page.objects]
        token = page.next_page_token
        if not token:
            return ids


@pytest.mark.parametrize("prefix", ["probe_", ""], ids=["prefix", "all"])
def test_page_tokens_survive_deletes_around_them(
    server: ServerProcess, stub: store_pb2_grpc.StoreServiceStub, prefix: str
) -> None:
    """A page token still resumes right after its page when the page's last object, the ones
    before it and the ones that would have come next (matching or not) are deleted, and when
    more objects are stored: the listing goes on with the next surviving object."""
    with server.client() as store:
        populated = populate_prefixes(store)
        matching = populated.matching(prefix)
        first = stub.List(pb.ListRequest(prefix=prefix, page_size=100), timeout=CALL_TIMEOUT)
        assert [ObjectID(meta.id) for meta in first.objects] == matching[:100]
        token = first.next_page_token
        again = stub.List(pb.ListRequest(prefix=prefix, page_size=100, page_token=token),
                          timeout=CALL_TIMEOUT)
        assert [ObjectID(meta.id) for meta in again.objects] == matching[100:200]
        # The page's last object, its predecessor, the next three matching objects and every
        # object (of any name) stored between the page's end and the fifth matching one on.
        start, end = populated.ids.index(matching[99]), populated.ids.index(matching[104])
        gone = {matching[98], matching[99], matching[100], matching[101], matching[102],
                *populated.ids[start:end]}
        for object_id in gone:
            assert store.delete(object_id) == [object_id]
        later_names = [f"{prefix}later", "", f"{prefix}later"]
        later = store.put_many([b"later"] * 3, [name or None for name in later_names])
    rest = page_through(stub, prefix, token, 100)
    expected = [object_id for object_id in matching[100:] if object_id not in gone]
    expected += [object_id for object_id, name in zip(later, later_names, strict=True)
                 if name.startswith(prefix)]
    assert rest == expected


def test_made_up_page_tokens_are_invalid_argument(
    server: ServerProcess, stub: store_pb2_grpc.StoreServiceStub
) -> None:
    """A page_token the server could not have issued is INVALID_ARGUMENT, not a page."""
    with server.client() as store:
        store.put_many([b"x"] * 300, [f"n{i}" for i in range(300)])
    for token in ("garbage", "-1", "1.5", "0x10", " 12", "12 ", "1e3", "+5", "\u0661\u0662",
                  "\uff11\uff12", "12\x00", "é", "==", "t" * 10_000):
        expect_status(Code.INVALID_ARGUMENT, lambda token=token: stub.List(
            pb.ListRequest(page_token=token), timeout=CALL_TIMEOUT))
    issued = stub.List(pb.ListRequest(page_size=10), timeout=CALL_TIMEOUT).next_page_token
    assert issued
    expect_status(Code.INVALID_ARGUMENT, lambda: stub.List(
        pb.ListRequest(page_token=issued + "x"), timeout=CALL_TIMEOUT))


def test_page_tokens_beyond_any_issued_sequence_are_invalid_argument(
    server: ServerProcess, stub: store_pb2_grpc.StoreServiceStub
) -> None:
    """A numeric page_token past the last sequence the server ever gave (or past uint64) is
    made up: INVALID_ARGUMENT, not an empty last page that would end a listing silently."""
    with server.client() as store:
        store.put_many([b"x"] * 30)
        last = store.info().last_sequence
    for token in (str(last + 1000), str(1 << 64), "9" * 400):
        expect_status(Code.INVALID_ARGUMENT, lambda token=token: stub.List(
            pb.ListRequest(page_token=token), timeout=CALL_TIMEOUT))


# -- 3. restart with many objects ----------------------------------------------------------------


def restart(
    server: ServerProcess, stop: str, start_server: Callable[..., ServerProcess], durability: str
) -> ServerProcess:
    """Stop ``server`` ("sigterm": cleanly, else SIGKILL) and start another on its data."""
    if stop == "sigterm":
        assert server.stop() == 0
    else:
        server.kill()
    return start_server(durability=durability, data_dir=server.data_dir)


def restart_payload(index: int) -> Any:
    """Object ``index``'s payload: an array every tenth, else 8 to 160 bytes of its own."""
    if index % 10 == 0:
        return np.arange(index % 50, dtype="<i4")
    return random.Random(index).randbytes(8 + index % 153)


def restart_name(index: int) -> str | None:
    """Object ``index``'s name: its own, one of 25 shared names, none, or a unicode one."""
    return (f"frame_{index}", f"shared_{index % 100}", None, f"run{index % 7}/ü_{index}")[index % 4]


def same_payload(got: Any, want: Any) -> bool:
    return bool(np.array_equal(got, want)) if isinstance(want, np.ndarray) else got == want


@pytest.mark.parametrize(
    ("durability", "stop"),
    [("sync", "sigterm"), ("async", "sigterm"), ("sync", "sigkill")],
)
def test_restart_with_many_objects(start_server: StartServer, durability: str, stop: str) -> None:
    """30,000 objects put with put_many (named, unnamed, 25 names each shared by 300 objects),
    then deletes by ID and by name and a replace; after a stop (SIGTERM; in sync mode also
    SIGKILL, as everything was acknowledged) and a restart on the same directory: the same
    listing, metadata and order included, the same count and last sequence, every name's
    newest object, and the payloads of a sample; the deleted stay deleted."""
    count = 30_000
    server = start_server(durability=durability)
    rng = random.Random(3)
    with server.client() as store:
        ids = store.put_many([restart_payload(i) for i in range(count)],
                             [restart_name(i) for i in range(count)])
        deleted = set(rng.sample(range(count), 500))
        for index in deleted:
            assert store.delete(ids[index]) == [ids[index]]
        gone_names = ["shared_1", "shared_41", "frame_0"]
        for name in gone_names:
            assert store.delete(name)
        replacement = store.replace("shared_5", b"replacement")
        before = listing(store)
        info = store.info()
    assert info.object_count == len(before)
    alive = [i for i in range(count) if i not in deleted and restart_name(i) not in gone_names
             and restart_name(i) != "shared_5"]
    assert ids_of(before) == [ids[i] for i in alive] + [replacement]
    restarted = restart(server, stop, start_server, durability)
    with restarted.client() as store:
        after = listing(store)
        assert after == before
        info_after = store.info()
        assert info_after.object_count == info.object_count
        # After a crash the server skips to the end of the sequences it had reserved on disk,
        # so that numbers a subscriber may have seen are never reused.
        if stop == "sigterm":
            assert info_after.last_sequence == info.last_sequence
        assert info_after.last_sequence >= info.last_sequence
        newest = {name: i for i in alive if (name := restart_name(i)) is not None}
        checked = [name for name in newest if name.startswith("shared_")]
        checked += rng.sample(sorted(newest), 500)
        got = store.get_many(checked)
        for name, value in zip(checked, got, strict=True):
            assert store.stat(name).id == ids[newest[name]], name
            assert same_payload(value, restart_payload(newest[name])), name
        assert store.get("shared_5") == b"replacement"
        for name in gone_names:
            with pytest.raises(ObjectNotFound):
                store.stat(name)
        sample = rng.sample(alive, 500)
        values = store.get_many([ids[i] for i in sample])
        assert all(same_payload(value, restart_payload(i))
                   for value, i in zip(values, sample, strict=True))
        for index in rng.sample(sorted(deleted), 20):
            with pytest.raises(ObjectNotFound):
                store.stat(ids[index])


# -- 4. bulk delete (DeleteMatching) -------------------------------------------------------------


class Model:
    """The objects a test's store should hold, by ID, with their metadata."""

    def __init__(self, infos: list[ObjectInfo]) -> None:
        self.objects = {info.id: info for info in infos}
        self.deleted: list[ObjectID] = []

    def add(self, store: StoreClient, names: list[str | None]) -> None:
        """Put one small object per name and track it."""
        for object_id in store.put_many([b"n"] * len(names), names):
            self.objects[object_id] = store.stat(object_id)

    def delete_matching(
        self,
        store: StoreClient,
        prefix: str = "",
        before_sequence: int = 0,
        created_before: float | None = None,
        everything: bool = False,
    ) -> int:
        """Call DeleteMatching and check its count and what remains against the model."""
        doomed = [
            info.id for info in self.objects.values()
            if info.name.startswith(prefix)
            and (not before_sequence or info.sequence < before_sequence)
            and (created_before is None or info.created.timestamp() < created_before)
        ]
        count = store.delete_matching(prefix, before_sequence=before_sequence,
                                      created_before=created_before, everything=everything)
        label = f"prefix={prefix!r} before_sequence={before_sequence} created_before=" \
                f"{created_before} everything={everything}"
        assert count == len(doomed), label
        for object_id in doomed:
            del self.objects[object_id]
        self.deleted += doomed
        assert ids_of(listing(store)) == list(self.objects), label
        assert store.info().object_count == len(self.objects), label
        return count


def delete_events(collector: Collector, store: StoreClient) -> list[Any]:
    """Every event up to a marker put now, whose event ends the wait."""
    marker = store.put(b"marker", name="zz_marker")
    return collector.until(lambda event: event.object.id == marker, timeout=60)


def timed_groups(store: StoreClient, names: list[str | None]) -> tuple[list[ObjectInfo], float]:
    """Put ``names`` twice, in two groups created apart; return their metadata and a time
    (seconds since the epoch) between the two groups' creation times."""
    first = store.put_many([b"g"] * len(names), names)
    time.sleep(0.05)  # the second group is created strictly later; no timing is asserted
    second = store.put_many([b"g"] * len(names), names)
    infos = listing(store)
    assert ids_of(infos) == first + second
    end_of_first = infos[len(first) - 1].created.timestamp()
    start_of_second = infos[len(first)].created.timestamp()
    assert end_of_first < start_of_second
    return infos, (end_of_first + start_of_second) / 2


def group_names(count: int) -> list[str | None]:
    return [(f"acq_{i}", f"acq_raw_{i}", f"other_{i}", None, "acq")[i % 5] for i in range(count)]


def test_delete_matching_conditions(server: ServerProcess, lane: bool) -> None:
    """DeleteMatching by prefix, by before_sequence, by created_before and by all three
    together (AND) deletes exactly the matching objects and says how many; nothing matching
    is 0; objects stored after a call are not touched by it; everything=True empties the
    store. A subscriber sees exactly one DELETE event per deleted object, with its ID."""
    with server.client(lane=lane) as store:
        assert store.colocated
        infos, between = timed_groups(store, group_names(3000))
        model = Model(infos)
        middle_a, middle_b = infos[1500].sequence, infos[4500].sequence
        subscription = store.subscribe()
        collector = Collector.of(subscription)
        try:
            assert model.delete_matching(store, "nomatch_") == 0
            assert model.delete_matching(store, before_sequence=1) == 0
            assert model.delete_matching(store, created_before=0.0) == 0
            assert model.delete_matching(store, "acq_raw_", before_sequence=middle_a) == 300
            assert model.delete_matching(store, "acq_", created_before=between) > 0
            model.add(store, ["acq_late", "acq_raw_late", None])
            assert model.delete_matching(store, "acq", before_sequence=middle_b,
                                         created_before=time.time() + 3600) > 0
            assert store.get("acq_late") == b"n"
            assert model.delete_matching(store, before_sequence=middle_b) > 0
            model.add(store, ["other_late"])
            assert model.delete_matching(store, "other_", before_sequence=middle_b + 100,
                                         created_before=between + 3600) == 20
            assert model.delete_matching(store, "", created_before=between) == 0
            remaining = len(model.objects)
            assert model.delete_matching(store, everything=True) == remaining
            assert listing(store) == [] and store.info().object_count == 0
            events = delete_events(collector, store)
        finally:
            collector.close()
    deletes = [event for event in events if event.type == "delete"]
    assert Counter(event.object.id for event in deletes) == Counter(model.deleted)
    assert len(deletes) == len(set(model.deleted)) == 6000 + 4
    assert all(event.type in ("put", "delete") for event in events)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (a bound against hangs, not a timing assertion)."""
    deadline = time.monotonic() + PROGRESS_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_delete_matching_spares_what_is_stored_during_the_call(
    server: ServerProcess, lane: bool
) -> None:
    """While a writer keeps putting matching objects, DeleteMatching over 10,000 matching
    objects deletes every object acknowledged before the call and none whose put began after
    it returned; all it deleted were stored before all it kept (one cut in sequence order);
    its count and the DELETE events (one each) agree with what is gone, and none of the
    deleted objects was stored after the call's first DELETE event."""
    with server.client(lane=lane) as store:
        pre = store.put_many([b"p"] * 20_000,
                             [f"acq_{i}" if i % 2 else f"keep_{i}" for i in range(20_000)])
        collector = Collector.of(store.subscribe())
        acked: list[tuple[ObjectID, bool]] = []  # each put, and whether it began after the call
        call_returned, stop = threading.Event(), threading.Event()
        failures: list[BaseException] = []

        def write() -> None:
            try:
                with server.client(lane=lane) as writer:
                    index = 0
                    while not stop.is_set():
                        began_after = call_returned.is_set()
                        acked.append((writer.put(b"w", name=f"acq_w{index}"), began_after))
                        index += 1
            except BaseException as exc:  # handed to the test thread
                failures.append(exc)

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        try:
            wait_until(lambda: len(acked) >= 20 or bool(failures), "the writer to start")
            acked_before = len(acked)
            count = store.delete_matching("acq_")
            call_returned.set()
            wait_until(lambda: sum(after for _, after in acked) >= 20 or bool(failures),
                       "puts after the call")
        finally:
            stop.set()
            thread.join(30)
        assert not failures, failures
        remaining = listing(store, "acq_")
        events = delete_events(collector, store)
        collector.close()
        assert ids_of(listing(store, "keep_")) == pre[0::2]
    remaining_ids = set(ids_of(remaining))
    certainly_before = set(pre[1::2]) | {object_id for object_id, _ in acked[:acked_before]}
    assert not certainly_before & remaining_ids
    assert {object_id for object_id, after in acked if after} <= remaining_ids
    gone = (set(pre[1::2]) | {object_id for object_id, _ in acked}) - remaining_ids
    assert count == len(gone)
    deletes = [event for event in events if event.type == "delete"]
    assert Counter(event.object.id for event in deletes) == Counter(gone)
    last_deleted = max(event.object.sequence for event in deletes)
    assert all(info.sequence > last_deleted for info in remaining)
    # The call began before its first DELETE event: nothing stored after that was deleted.
    first_delete = min(event.sequence for event in deletes)
    assert all(event.object.sequence < first_delete for event in deletes)


@pytest.mark.parametrize(
    ("durability", "stop"), [("async", "sigterm"), ("sync", "sigterm"), ("sync", "sigkill")]
)
def test_delete_matching_persists_across_restart(
    start_server: StartServer, durability: str, stop: str
) -> None:
    """Deletions by DeleteMatching (prefix and sequence, prefix and time, sequence alone) are
    still in force after a restart; in sync mode, once the call returned, even after SIGKILL."""
    server = start_server(durability=durability)
    with server.client() as store:
        infos, between = timed_groups(store, group_names(2500))
        model = Model(infos)
        assert model.delete_matching(store, "acq_", before_sequence=infos[3000].sequence) > 0
        assert model.delete_matching(store, "other_", created_before=between) == 500
        assert model.delete_matching(store, before_sequence=infos[100].sequence) > 0
        before = listing(store)
    restarted = restart(server, stop, start_server, durability)
    with restarted.client() as store:
        assert listing(store) == before
        assert store.info().object_count == len(before)
        for object_id in random.Random(4).sample(model.deleted, 50):
            with pytest.raises(ObjectNotFound):
                store.stat(object_id)


def test_delete_matching_refuses_bad_requests(
    server: ServerProcess, stub: store_pb2_grpc.StoreServiceStub, lane: bool
) -> None:
    """No condition (and not everything), a prefix over the name limit in bytes, a prefix
    that is not UTF-8 and a malformed created_before are INVALID_ARGUMENT (InvalidRequest from
    the client) and delete nothing; a prefix of exactly the limit matching nothing is 0."""
    with server.client(lane=lane) as store:
        ids = store.put_many([b"v"] * 50, [f"p{i}" for i in range(50)])
        limit = store.info().max_name_length
        for call in (
            lambda: store.delete_matching(),
            lambda: store.delete_matching("", before_sequence=0, everything=False),
            lambda: store.delete_matching("p" * (limit + 1)),
            lambda: store.delete_matching("\u20ac" * (limit // 3 + 1)),  # over in bytes only
        ):
            with pytest.raises(InvalidRequest):
                call()
        assert store.delete_matching("p" * limit) == 0
        lane_socket = stub.Info(pb.InfoRequest(), timeout=CALL_TIMEOUT).lane_socket
        # field 1 (prefix) = b"\xff\xfe": a string that is not UTF-8.
        not_utf8 = bytes([0x0A, 0x02, 0xFF, 0xFE])
        with grpc.insecure_channel(server.unix_address) as channel:
            delete_bytes = channel.unary_unary(
                "/improv_store.v1.StoreService/DeleteMatching",
                request_serializer=None,
                response_deserializer=pb.DeleteMatchingResponse.FromString,
            )
            expect_status(Code.INVALID_ARGUMENT,
                          lambda: delete_bytes(not_utf8, timeout=CALL_TIMEOUT))
        raw_lane = RawLane(lane_socket)
        try:
            status, _ = raw_lane.call(pb.LANE_METHOD_DELETE_MATCHING, not_utf8)
            assert status == Code.INVALID_ARGUMENT
        finally:
            raw_lane.socket.close()
        for nanos in (-1, 1_000_000_000):
            request = pb.DeleteMatchingRequest(prefix="p")
            request.created_before.seconds, request.created_before.nanos = 2_000_000_000, nanos
            expect_status(Code.INVALID_ARGUMENT,
                          lambda request=request: stub.DeleteMatching(request,
                                                                      timeout=CALL_TIMEOUT))
        assert ids_of(listing(store)) == ids


def test_delete_matching_response_names_its_last_event(
    server: ServerProcess, stub: store_pb2_grpc.StoreServiceStub
) -> None:
    """DeleteMatchingResponse: the count and the sequence of the call's last DELETE event;
    zero and zero when nothing matched."""
    with server.client() as store:
        store.put_many([b"v"] * 50, [f"p{i}" for i in range(50)])
        with store.subscribe(since=store.info().last_sequence + 1) as subscription:
            request = pb.DeleteMatchingRequest(prefix="p4")
            response = stub.DeleteMatching(request, timeout=CALL_TIMEOUT)
            events = Collector(subscription).take(11)
        assert response.deleted_count == 11  # p4 and p40 to p49
        assert response.last_sequence == store.info().last_sequence == events[-1].sequence
        assert {event.type for event in events} == {"delete"}
        again = stub.DeleteMatching(request, timeout=CALL_TIMEOUT)
        assert (again.deleted_count, again.last_sequence) == (0, 0)
