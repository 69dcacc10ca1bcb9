"""improv's Redis-era store tests (its test/test_store_with_errors.py as RedisStoreInterface
came in, January 2024, and as improv has them now), with redis-server replaced by an
improv-store server; then what the Redis store did not have: zero-copy arrays, the
compression level, the address keyword, and the server's cleanup in the harvester's place."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable

import numpy as np
import pytest
from conftest import ServerProcess, free_port
from scipy.sparse import csc_matrix

from improv_store.client import ObjectID, StoreClient
from improv_store.client.improv import (
    CannotConnectToStoreInterfaceError,
    ObjectNotFoundError,
    RedisStoreInterface,
)

# -- improv's fixtures: redis-server replaced by an improv-store server -----------------------


@pytest.fixture(scope="module")
def module_server(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_module_server()


@pytest.fixture
def setup_store(module_server: ServerProcess) -> ServerProcess:
    """An empty store, as improv's fixture started a fresh redis-server for each test."""
    with module_server.client() as client:
        client.delete_matching(everything=True)
    return module_server


@pytest.fixture
def server_port_num(module_server: ServerProcess) -> int:
    """The store's TCP port (improv: the port redis-server listens on)."""
    return module_server.port


# -- improv's tests (``StoreInterface`` there is RedisStoreInterface; here it stays the
# -- Plasma-era class, so they name RedisStoreInterface) -------------------------------------


def test_connect(setup_store: ServerProcess, server_port_num: int) -> None:
    store = RedisStoreInterface(server_port_num=server_port_num)
    assert isinstance(store.client, StoreClient)  # improv: redis.Redis


def test_redis_connect(setup_store: ServerProcess, server_port_num: int) -> None:
    store = RedisStoreInterface(server_port_num=server_port_num)
    assert store.client.health() == "SERVING"  # improv: store.client.ping()


def test_redis_connect_wrong_port(setup_store: ServerProcess) -> None:
    bad_port_num = free_port()  # improv: 1234, which something may listen on
    with pytest.raises(CannotConnectToStoreInterfaceError) as e:
        RedisStoreInterface(server_port_num=bad_port_num)
    assert e.value.message == f"Cannot connect to store at {bad_port_num!s}"


def test_connect_incorrect_path(setup_store: ServerProcess) -> None:
    """improv skipped it ("Redis does not connect via path"); improv-store does."""
    store_loc = "asdf"
    with pytest.raises(CannotConnectToStoreInterfaceError) as e:
        RedisStoreInterface(address=store_loc)
    assert e.value.message == f"Cannot connect to store at {store_loc!s}"


def test_connect_none_path(setup_store: ServerProcess) -> None:
    server_port_num = None
    with pytest.raises(CannotConnectToStoreInterfaceError) as e:
        RedisStoreInterface(server_port_num=server_port_num)
    assert e.value.message == f"Cannot connect to store at {server_port_num!s}"


def test_init_empty(setup_store: ServerProcess, server_port_num: int) -> None:
    store = RedisStoreInterface(server_port_num=server_port_num)
    assert store.get_all() == []


def test_is_csc_matrix_and_put(setup_store: ServerProcess, server_port_num: int) -> None:
    mat = csc_matrix((3, 4), dtype=np.int8)
    store = RedisStoreInterface(server_port_num=server_port_num)
    x = store.put(mat)
    assert isinstance(store.get(x), csc_matrix)


def test_get_list_and_all(setup_store: ServerProcess, server_port_num: int) -> None:
    store = RedisStoreInterface(server_port_num=server_port_num)
    id = store.put(1)
    id2 = store.put(2)
    store.put(3)
    assert store.get_list([id, id2]) == [1, 2]
    assert sorted(store.get_all()) == [1, 2, 3]


def test_reset(setup_store: ServerProcess, server_port_num: int) -> None:
    store = RedisStoreInterface(server_port_num=server_port_num)
    store.reset()
    id = store.put(1)
    assert store.get(id) == 1


def test_put_one(setup_store: ServerProcess, server_port_num: int) -> None:
    store = RedisStoreInterface(server_port_num=server_port_num)
    id = store.put(1)
    assert store.get(id) == 1


def test_redis_put_one(setup_store: ServerProcess, server_port_num: int) -> None:
    store = RedisStoreInterface(server_port_num=server_port_num)
    key = store.put(1)
    assert store.get(key) == 1


def test_redis_get_unknown_object(setup_store: ServerProcess, server_port_num: int) -> None:
    store = RedisStoreInterface(server_port_num=server_port_num)
    with pytest.raises(ObjectNotFoundError):
        store.get("unknown")


def test_getOne(setup_store: ServerProcess, server_port_num: int) -> None:
    store = RedisStoreInterface(server_port_num=server_port_num)
    id = store.put(1)
    assert store.get(id) == 1


def test_redis_get_one(setup_store: ServerProcess, server_port_num: int) -> None:
    store = RedisStoreInterface(server_port_num=server_port_num)
    key = store.put(3)
    assert store.get(key) == 3


# -- beyond improv's tests --------------------------------------------------------------------


def test_keys_attributes_and_missing_keys(setup_store: ServerProcess) -> None:
    """Keys are strings (an ObjectID in hex); a deleted key, or one of a missing list, raises
    ObjectNotFoundError with improv's message."""
    store = RedisStoreInterface("Processor", setup_store.port, "127.0.0.1", 3)
    assert (store.name, store.server_port_num, store.hostname, store.compression_level) == (
        "Processor", setup_store.port, "127.0.0.1", 3)
    key, other = store.put({"gain": 1}), store.put("two")
    assert isinstance(key, str) and len(ObjectID.from_hex(key).binary()) == 20
    store.client.delete(ObjectID.from_hex(key))
    with pytest.raises(ObjectNotFoundError) as e:
        store.get(key)
    assert e.value.message == f'Cannnot find object with ID/name "{key}"'
    with pytest.raises(ObjectNotFoundError) as e:
        store.get_list([other, key])
    assert e.value.obj_id_or_name == key
    with pytest.raises(ValueError, match="compression_level"):
        RedisStoreInterface(server_port_num=setup_store.port, compression_level=10)


def test_arrays_are_stored_as_arrays_and_read_in_place(setup_store: ServerProcess) -> None:
    """A frame is an NDARRAY object (not a compressed pickle); a colocated reader gets a
    read-only view on the store's shared memory: two reads share it, nothing is copied."""
    store = RedisStoreInterface(server_port_num=setup_store.port)
    assert store.client.colocated
    frame = np.arange(512 * 512, dtype=np.uint16).reshape(512, 512)
    fortran = np.asfortranarray(np.random.default_rng(0).random((256, 128), dtype=np.float32))
    key, fortran_key = store.put(frame), store.put(fortran)
    info = store.client.stat(ObjectID.from_hex(key))
    assert (info.encoding, info.dtype, info.shape, info.size) == ("ndarray", "<u2", (512, 512),
                                                                  frame.nbytes)
    first, second = store.get(key), store.get_list([key])[0]
    assert np.array_equal(first, frame) and not first.flags.writeable
    assert np.shares_memory(first, second)
    back = store.get(fortran_key)
    assert back.flags.f_contiguous and np.array_equal(back, fortran)


def test_compression_level_is_honoured_for_pickled_values(setup_store: ServerProcess) -> None:
    """Other values are pickled and zlib-compressed as improv stores them (None: not), and
    any improv-store client's get returns the value itself."""
    value = {"trace": [0.0] * 20_000, "name": "roi"}
    sizes = {}
    for level in (9, 0, None):
        store = RedisStoreInterface(server_port_num=setup_store.port, compression_level=level)
        key = store.put(value)
        assert store.get(key) == value
        with setup_store.client(tcp=True) as plain:
            assert plain.get(ObjectID.from_hex(key)) == value
        sizes[level] = store.client.stat(ObjectID.from_hex(key)).size
    assert sizes[9] < len(pickle.dumps(value, protocol=5)) // 10
    assert sizes[0] > sizes[9] and sizes[None] > sizes[9]


def test_address_keyword_reaches_the_unix_socket(setup_store: ServerProcess) -> None:
    over_tcp = RedisStoreInterface(server_port_num=setup_store.port, hostname="127.0.0.1")
    over_socket = RedisStoreInterface(address=setup_store.socket_path)
    assert over_socket.client.address == "unix:" + setup_store.socket_path
    assert over_socket.get(over_tcp.put([1, 2])) == [1, 2]
    with pytest.raises(CannotConnectToStoreInterfaceError) as e:
        RedisStoreInterface(address=setup_store.socket_path + ".absent")
    assert e.value.message == f"Cannot connect to store at {setup_store.socket_path}.absent"


def test_reset_keeps_arrays_read_before_valid(
    start_server: Callable[..., ServerProcess],
) -> None:
    """reset() leaves the old connection open: an array read through it keeps its shared
    memory, even once its key is deleted and new objects fill a small store."""
    server = start_server("--memory", "4M")
    store = RedisStoreInterface(server_port_num=server.port)
    key = store.put(np.full(1 << 20, 7, dtype=np.uint8))
    frame = store.get(key)
    store.reset()
    store.client.delete(ObjectID.from_hex(key))
    for index in range(20):
        store.client.delete(ObjectID.from_hex(store.put(np.full(1 << 20, index, np.uint8))))
    assert (frame == 7).all()


def test_get_list_and_all_in_batches_the_server_accepts(
    start_server: Callable[..., ServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over gRPC (not colocated) more keys than --max-batch-size take several BatchGets."""
    monkeypatch.setenv("IMPROV_STORE_TRANSFER", "inline")
    server = start_server("--max-batch-size", "4")
    store = RedisStoreInterface(server_port_num=server.port)
    assert not store.client.colocated
    keys = [store.put(index) for index in range(10)]
    assert store.get_list(keys) == list(range(10))
    assert store.get_all() == list(range(10))


def test_max_stored_bytes_deletes_the_oldest_keys(
    start_server: Callable[..., ServerProcess],
) -> None:
    """improv's harvester, as the server's --max-stored-bytes: past the limit the oldest
    objects go, until the rest take at most three quarters of it, each with a DELETE event."""
    limit = 1 << 20
    server = start_server("--max-stored-bytes", "1M")
    store = RedisStoreInterface(server_port_num=server.port)
    keys = [store.put(np.full(100_000, index, dtype=np.uint8)) for index in range(20)]
    deadline = time.monotonic() + 30
    while len(list(store.client.list())) == 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [int(array[0]) for array in store.get_all()]
    assert 0 < len(survivors) < 20
    assert survivors == list(range(20 - len(survivors), 20))  # the newest are kept
    assert sum(info.size for info in store.client.list()) <= limit * 3 // 4
    deleted = keys[: 20 - len(survivors)]
    for key in deleted:
        with pytest.raises(ObjectNotFoundError):
            store.get(key)
    assert store.get_list(keys[-len(survivors):])[-1][0] == 19
    with store.client.subscribe(since=1) as subscription:
        events = iter(subscription)
        seen = [next(events) for _ in range(20 + len(deleted))]
    assert [e.object.id.hex() for e in seen if e.type == "delete"] == deleted


def test_expire_after_deletes_old_keys(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--expire-after", "0.5")
    store = RedisStoreInterface(server_port_num=server.port)
    key = store.put("short-lived")
    deadline = time.monotonic() + 30
    while list(store.client.list()) and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(ObjectNotFoundError):
        store.get(key)
