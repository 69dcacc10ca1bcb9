"""The store's own cleanup (--expire-after, --max-stored-bytes): improv's harvester, as a
server option, deleting with an event per object."""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import ServerProcess

from improv_store.service.config import ServerConfig
from improv_store.service.reaper import LOW_WATER, Reaper
from improv_store.service.store import Store
from improv_store.v1 import store_pb2 as pb

KiB = 1 << 10


@pytest.fixture
def store() -> Iterator[Store]:
    with tempfile.TemporaryDirectory(prefix="reaper-") as data_dir:
        store = Store(ServerConfig(data_dir=data_dir, durability="none", memory=64 << 20))
        try:
            yield store
        finally:
            store.close()


def put(store: Store, name: str, size: int = KiB) -> pb.ObjectMeta:
    return store.put(pb.ObjectSpec(name=name), bytes(size)).meta


def test_over_the_limit_the_oldest_go_down_to_three_quarters(store: Store) -> None:
    metas = [put(store, f"frame/{i}") for i in range(100)]
    last = store.info().last_sequence
    reaper = Reaper(store, expire_after=0, max_stored_bytes=90 * KiB)
    assert reaper.reap() == 100 - int(90 * LOW_WATER)
    kept = [meta.name for meta in store.list("", 1000, "").objects]
    assert kept == [meta.name for meta in metas[-int(90 * LOW_WATER):]]
    subscription = store.subscribe("", last + 1)
    deleted = list(itertools.islice(subscription, 100 - int(90 * LOW_WATER)))
    subscription.close()
    assert [event.type for event in deleted] == [pb.EVENT_TYPE_DELETE] * len(deleted)
    assert [event.meta.id for event in deleted] == [meta.id for meta in metas[: len(deleted)]]
    assert reaper.reap() == 0  # under the limit now: nothing more goes


def test_objects_past_their_age_go_and_younger_ones_stay(store: Store) -> None:
    old = put(store, "old")
    time.sleep(1.0)
    young = put(store, "young")
    now = time.time()
    age_old = now - old.create_time.ToNanoseconds() / 1e9
    age_young = now - young.create_time.ToNanoseconds() / 1e9
    reaper = Reaper(store, expire_after=(age_old + age_young) / 2, max_stored_bytes=0)
    assert reaper.reap() == 1
    assert [meta.name for meta in store.list("", 10, "").objects] == ["young"]


def test_a_server_keeps_its_stored_bytes_under_the_limit(
    start_server: Callable[..., ServerProcess],
) -> None:
    """--max-stored-bytes on a running server: the oldest objects go, each with its event,
    and the newest stay."""
    server = start_server("--max-stored-bytes", "64K")
    with server.client() as store, store.subscribe("frame/") as events:
        ids = [store.put(bytes(KiB), name=f"frame/{i}") for i in range(100)]
        deadline = time.monotonic() + 30
        while store.info().total_bytes > 64 * KiB and time.monotonic() < deadline:
            time.sleep(0.05)
        info = store.info()
        assert info.total_bytes <= 64 * KiB
        remaining = [item.id for item in store.list("frame/")]
        assert remaining == ids[-len(remaining):] and ids[-1] in remaining
        seen = list(itertools.islice(events, 100 + 100 - len(remaining)))
    deletes = [event.object.id for event in seen if event.type == "delete"]
    assert deletes == ids[: 100 - len(remaining)]
