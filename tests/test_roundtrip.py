"""Objects put by one process come back identical in another, over the unix socket and TCP."""

from __future__ import annotations

import multiprocessing
from typing import Any

import crc32c
import numpy as np
import pytest
import scipy.sparse

from improv_store.client import InvalidRequest, ObjectID, StoreClient

SPAWN = multiprocessing.get_context("spawn")


def sample_objects() -> dict[str, Any]:
    """Every kind of object improv actors store, built the same way in any process."""
    rng = np.random.default_rng(7)
    grid = np.arange(60, dtype=np.float64).reshape(6, 10)
    objects: dict[str, Any] = {
        "u8_c": rng.integers(0, 255, (4, 5), dtype=np.uint8),
        "u16_f": np.asfortranarray(rng.integers(0, 65535, (512, 512), dtype=np.uint16)),
        "f32_f": np.asfortranarray(rng.random((3, 4, 5), dtype=np.float32)),
        "f64_c": rng.random(1000),
        "c128": rng.random(8) + 1j * rng.random(8),
        "bool": rng.random((7, 3)) > 0.5,
        "big_endian": np.arange(10, dtype=">i4"),
        "zero_d": np.array(3.5),
        "empty": np.zeros((0, 4), dtype=np.int16),
        "non_contiguous": grid[::2, ::3],
        "bytes": b"\x00raw\xffbytes" * 100,
        "empty_bytes": b"",
        "dict": {"gain": 2, "frames": [1, 2, 3], "nested": {"a": (1, "b")}},
        "list_of_dicts": [{"frame": np.ones((2, 2)), "t": 0.1}, {"frame": np.zeros(3), "t": 0.2}],
        "tuple": (1, "two", 3.0),
        "int": 42,
        "sparse": scipy.sparse.random(50, 40, density=0.1, format="csc", random_state=3),
    }
    return objects


def assert_same(actual: Any, expected: Any) -> None:
    """Deep equality that understands arrays and sparse matrices."""
    if scipy.sparse.issparse(expected):
        assert scipy.sparse.issparse(actual) and actual.format == expected.format
        assert (actual != expected).nnz == 0
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        np.testing.assert_array_equal(actual, expected)
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys()
        for key in expected:
            assert_same(actual[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected)
        for item, wanted in zip(actual, expected, strict=True):
            assert_same(item, wanted)
    else:
        assert type(actual) is type(expected) and actual == expected


def put_samples(address: str) -> dict[str, bytes]:
    """Child process: put every sample object; return name -> raw ID."""
    with StoreClient(address) as store:
        return {name: store.put(obj, name=name).binary() for name, obj in sample_objects().items()}


def get_by_ids(address: str, ids: dict[str, bytes]) -> dict[str, tuple[str | None, Any]]:
    """Child process: get objects by ID; return each with its dtype string.

    numpy's pickling (how the result returns to the parent) drops a
    non-native byte order, so the child reports the dtype it received.
    """
    with StoreClient(address) as store:
        fetched = {name: store.get(ObjectID(raw)) for name, raw in ids.items()}
    return {
        name: (getattr(obj, "dtype", None) and obj.dtype.str, obj) for name, obj in fetched.items()
    }


@pytest.fixture(autouse=True, params=["inline", "shm", "shm-over-grpc"])
def transfer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every round trip three ways: inline bytes over gRPC; shared memory for every
    payload with calls over the local lane; and shared memory with calls over gRPC.

    Set in the environment, so client processes spawned by a test inherit it.
    """
    monkeypatch.setenv("IMPROV_STORE_TRANSFER", request.param.removesuffix("-over-grpc"))
    monkeypatch.setenv("IMPROV_STORE_LANE", "off" if "grpc" in request.param else "on")
    return request.param


@pytest.fixture(params=["unix", "tcp"])
def address(request: pytest.FixtureRequest, server: Any) -> str:
    return server.unix_address if request.param == "unix" else server.tcp_address


def test_put_in_child_get_here(address: str) -> None:
    """What another process put reads back identical, by ID and by name."""
    with SPAWN.Pool(1) as pool:
        ids = pool.apply(put_samples, (address,))
    expected = sample_objects()
    with StoreClient(address) as store:
        for name, raw in ids.items():
            assert_same(store.get(ObjectID(raw)), expected[name])
            assert_same(store.get(name), expected[name])


def test_put_here_get_in_child(address: str) -> None:
    """What this process put, another process reads back identical, in one batch too."""
    expected = sample_objects()
    with StoreClient(address) as store:
        ids = {name: store.put(obj, name=name).binary() for name, obj in expected.items()}
        batch = store.get_many([ObjectID(raw) for raw in ids.values()])
    with SPAWN.Pool(1) as pool:
        fetched = pool.apply(get_by_ids, (address, ids))
    for name, (dtype, obj) in fetched.items():
        if isinstance(expected[name], np.ndarray):
            assert dtype == expected[name].dtype.str
            obj = obj.astype(expected[name].dtype)
        assert_same(obj, expected[name])
    for obj, name in zip(batch, ids, strict=True):
        assert_same(obj, expected[name])


def test_arrays_keep_order_and_are_read_only(store: StoreClient) -> None:
    """A Fortran array stays Fortran (no copy on the way in) and reads back read-only."""
    frame = np.asfortranarray(np.arange(12, dtype=np.uint16).reshape(3, 4))
    got = store.get(store.put(frame))
    assert got.flags.f_contiguous and not got.flags.writeable
    info = store.stat(store.put(frame, name="fortran"))
    assert (info.encoding, info.dtype, info.shape, info.order) == ("ndarray", "<u2", (3, 4), "F")


def checksum_in_child(address: str, raw_id: bytes) -> tuple[int, tuple[int, ...], str]:
    with StoreClient(address) as store:
        array = store.get(ObjectID(raw_id))
        return crc32c.crc32c(array.data), array.shape, array.dtype.str


def test_256_mib_over_tcp(server: Any) -> None:
    """A 256 MiB array crosses TCP through the chunked streams, both ways, intact."""
    array = np.arange(32 << 20, dtype=np.float64)  # 256 MiB
    with server.client(tcp=True) as store:
        object_id = store.put(array, name="huge")
        assert store.stat(object_id).size == array.nbytes
        with SPAWN.Pool(1) as pool:
            checksum, shape, dtype = pool.apply(
                checksum_in_child, (server.tcp_address, object_id.binary())
            )
        assert (checksum, shape, dtype) == (crc32c.crc32c(array.data), array.shape, array.dtype.str)
        assert store.stat(object_id).crc32c == checksum
        back = store.get("huge")
        assert np.array_equal(back, array)


def test_large_bytes_over_tcp_come_back_as_ordinary_bytes(server: Any) -> None:
    """A RAW payload above the inline limit is streamed into a bytes object filled in
    place; it is a plain, equal, hashable bytes, and a second get is a separate object."""
    blob = np.random.default_rng(2).bytes(9 << 20)
    with server.client(tcp=True) as store:
        object_id = store.put(blob)
        first, second = store.get(object_id), store.get(object_id)
    assert type(first) is bytes and first == blob and hash(first) == hash(blob)
    assert first is not second and second == blob


def test_large_bytes_and_pickles_stream(store: StoreClient) -> None:
    """RAW and pickled payloads above the inline limit round-trip (streamed, or in shm)."""
    blob = np.random.default_rng(1).bytes(9 << 20)
    frames = {"a": np.ones((1024, 1024), dtype=np.float64), "b": list(range(10))}
    assert store.get(store.put(blob)) == blob
    assert_same(store.get(store.put(frames)), frames)
    assert store.get_many([store.put(blob)]) == [blob]


def test_get_many_of_more_objects_than_one_batch_holds(server: Any) -> None:
    """get_many splits what it asks for into BatchGets the server accepts (1,024 each)."""
    with server.client(transfer="inline") as store:
        ids = store.put_many([i.to_bytes(2, "little") for i in range(2500)])
        assert store.get_many(ids) == [i.to_bytes(2, "little") for i in range(2500)]


def test_names_replace_delete_list(store: StoreClient) -> None:
    """Get by name returns the newest; replace drops older ones; delete by name drops all."""
    first = store.put(1, name="params")
    second = store.put(2, name="params")
    assert store.get("params") == 2 and store.get(first) == 1
    third = store.replace("params", 3)
    assert store.get("params") == 3
    assert [info.id for info in store.list("params")] == [third]
    assert {first, second} & {info.id for info in store.list()} == set()
    store.put(4, name="params")
    assert len(store.delete("params")) == 2
    assert list(store.list("params")) == []


def test_list_pages_in_sequence_order(store: StoreClient) -> None:
    """Listing walks every page, in sequence order, filtered by prefix."""
    ids = [store.put(i, name=f"acq_{i}") for i in range(1205)]
    store.put(b"other", name="viz_1")
    listed = list(store.list("acq_"))
    assert [info.id for info in listed] == ids
    assert [info.sequence for info in listed] == sorted(info.sequence for info in listed)
    assert len(list(store.list())) == 1206


def test_wait_for_an_object_put_later(store: StoreClient, server: Any) -> None:
    """get(timeout=...) blocks until another process puts the object."""
    wanted = ObjectID.random()
    with SPAWN.Pool(1) as pool:
        pending = pool.apply_async(_get_waiting, (server.unix_address, wanted.binary()))
        with StoreClient(server.unix_address) as writer:
            writer.put(b"arrived", id=wanted)
        assert pending.get(timeout=30) == b"arrived"


def _get_waiting(address: str, raw_id: bytes) -> bytes:
    with StoreClient(address) as store:
        return store.get(ObjectID(raw_id), timeout=20)


def test_put_many_stores_each_object_on_its_own(store: StoreClient) -> None:
    """put_many keeps order; a refused item does not stop the others and is named after."""
    objects = [b"a" * 128, np.arange(10), {"k": 1}, np.zeros(1 << 20)]  # the last goes alone
    ids = store.put_many(objects, names=["n0", "n1", "n2", "n3"])
    assert [store.stat(object_id).name for object_id in ids] == ["n0", "n1", "n2", "n3"]
    for object_id, expected in zip(ids, objects, strict=True):
        assert_same(store.get(object_id), expected)
    with pytest.raises(InvalidRequest, match="item 1"):
        store.put_many([b"ok", b"refused", b"also ok"], names=["x0", "x" * 300, "x2"])
    assert [info.name for info in store.list("x")] == ["x0", "x2"]
    with pytest.raises(ValueError):
        store.put_many([b"1", b"2"], names=["only one"])


def test_batch_put_over_the_raw_contract(server: Any) -> None:
    """BatchPut answers per item, refuses oversized batches, and keeps the server serving."""
    import grpc

    from improv_store.v1 import store_pb2 as pb
    from improv_store.v1 import store_pb2_grpc

    with grpc.insecure_channel(server.unix_address) as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        good = pb.PutRequest(spec=pb.ObjectSpec(name="g"), data=b"x")
        bad = pb.PutRequest(spec=pb.ObjectSpec(id=b"short"), data=b"x")
        results = stub.BatchPut(pb.BatchPutRequest(items=[good, bad, good])).results
        assert [r.code for r in results] == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0], 0]
        assert results[0].meta.id != results[2].meta.id
        with pytest.raises(grpc.RpcError) as failure:
            stub.BatchPut(pb.BatchPutRequest(items=[good] * 1025))
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with server.client() as store:
        assert len(list(store.list("g"))) == 2
