"""improv_store.plasma, Plasma's Python client API, against a real server: every method,
zero copy through shared memory, timeouts, errors, IDs and notifications; and, opt-in, the
same script against real Plasma (pyarrow 11) with the outputs compared."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import ServerProcess

import improv_store.plasma as plasma
from improv_store.client import ObjectExists, StoreError
from improv_store.client import ObjectID as StoreObjectID
from improv_store.plasma import notifications

PLASMA_PYTHON = Path(__file__).resolve().parent.parent / ".venv-plasma" / "bin" / "python"
BIG = 1 << 20  # large enough to travel through shared memory (above shm_min_size)


@pytest.fixture(scope="module")
def module_server(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_module_server("--memory", str(64 << 20))


@pytest.fixture
def client(module_server: ServerProcess) -> Iterator[plasma.PlasmaClient]:
    connected = plasma.connect(module_server.socket_path)
    yield connected
    connected.disconnect()


def in_shared_memory(value: np.ndarray) -> bool:
    """Whether ``value``'s memory is a mapping of a file in /dev/shm (the store's segments)."""
    address = value.ctypes.data
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, *rest = line.split()
            start, end = (int(part, 16) for part in span.split("-"))
            if start <= address < end:
                return bool(rest) and rest[-1].startswith("/dev/shm/")
    return False


# -- ObjectID ------------------------------------------------------------------------


def test_object_id_is_twenty_bytes_hashable_picklable_and_unordered() -> None:
    raw = bytes(range(20))
    object_id = plasma.ObjectID(raw)
    assert object_id.binary() == raw
    assert object_id == plasma.ObjectID(raw) and hash(object_id) == hash(plasma.ObjectID(raw))
    assert object_id != raw  # as in Plasma: an ID is not its bytes
    assert object_id == StoreObjectID(raw)  # the same object to improv_store.client
    assert repr(object_id) == f"ObjectID({raw.hex()})"
    copy = pickle.loads(pickle.dumps(object_id))
    assert type(copy) is plasma.ObjectID and copy == object_id
    assert plasma.ObjectID.from_random() != plasma.ObjectID.from_random()
    assert {object_id: 1}[plasma.ObjectID(raw)] == 1
    with pytest.raises(ValueError, match="20 bytes"):
        plasma.ObjectID(b"short")
    with pytest.raises(ValueError, match="20 bytes"):
        plasma.ObjectID("a" * 20)
    with pytest.raises(TypeError):
        _ = object_id < plasma.ObjectID.from_random()


# -- put and get ---------------------------------------------------------------------


def test_put_get_values(client: plasma.PlasmaClient) -> None:
    values = [np.arange(12.0).reshape(3, 4), b"raw bytes", "a string", {"a": [1, 2]}, None]
    ids = [client.put(value) for value in values]
    assert all(type(object_id) is plasma.ObjectID for object_id in ids)
    got = client.get(ids)
    np.testing.assert_array_equal(got[0], values[0])
    assert got[1:] == values[1:]
    assert client.get(ids[2]) == "a string"
    chosen = plasma.ObjectID.from_random()
    assert client.put(np.ones(3), chosen) == chosen
    with pytest.raises(plasma.PlasmaObjectExists):
        client.put(b"again", chosen)


def test_get_of_a_large_array_is_a_view_on_shared_memory(client: plasma.PlasmaClient) -> None:
    frame = np.random.default_rng(1).integers(0, 1000, (512, 512), dtype=np.uint16)
    value = client.get(client.put(frame))
    np.testing.assert_array_equal(value, frame)
    assert not value.flags.writeable
    assert in_shared_memory(value)


def test_missing_objects_are_not_available_after_the_timeout(client: plasma.PlasmaClient) -> None:
    missing = plasma.ObjectID.from_random()
    present = client.put(b"here")
    assert client.get(missing, timeout_ms=0) is plasma.ObjectNotAvailable
    assert client.get([present, missing], timeout_ms=50) == [b"here", plasma.ObjectNotAvailable]
    assert client.get_buffers([missing], timeout_ms=0) == [None]
    assert client.get_buffers([missing], timeout_ms=0, with_meta=True) == [(None, None)]
    assert client.get_metadata([missing], timeout_ms=10) == [None]


def test_get_waits_for_an_object_sealed_later(client: plasma.PlasmaClient) -> None:
    object_id = plasma.ObjectID.from_random()
    buffer = client.create(object_id, 4)
    buffer[:] = np.frombuffer(b"late", np.uint8)
    reader = plasma.connect(client.store_socket_name)
    sealer = threading.Timer(0.2, client.seal, args=(object_id,))
    sealer.start()
    try:
        [found] = reader.get_buffers([object_id], timeout_ms=-1)
        assert found.to_pybytes() == b"late"
    finally:
        sealer.join()
        reader.disconnect()


# -- raw buffers and metadata --------------------------------------------------------


def test_put_raw_buffer_and_get_buffers_with_metadata(client: plasma.PlasmaClient) -> None:
    object_id = client.put_raw_buffer(b"hello", metadata=b"\x00meta\xff")
    [buffer] = client.get_buffers([object_id])
    assert isinstance(buffer, plasma.PlasmaBuffer) and buffer.object_id == object_id
    assert buffer.to_pybytes() == b"hello" and buffer.size == len(buffer) == 5
    assert bytes(memoryview(buffer)) == b"hello" and not buffer.is_mutable
    assert buffer.slice(1, 3).to_pybytes() == b"ell" and buffer.equals(b"hello")
    [(metadata, data)] = client.get_buffers([object_id], with_meta=True)
    assert metadata == b"\x00meta\xff" and data.to_pybytes() == b"hello"
    [meta_buffer] = client.get_metadata([object_id])
    assert meta_buffer.to_pybytes() == b"\x00meta\xff"
    assert client.get_metadata([client.put(b"none")])[0].to_pybytes() == b""
    np.testing.assert_array_equal(client.get(object_id), np.frombuffer(b"hello", np.uint8))


def test_get_buffers_of_large_objects_are_shared_memory(client: plasma.PlasmaClient) -> None:
    payload = os.urandom(BIG)
    raw_id = client.put_raw_buffer(payload, metadata=b"m")
    array = np.arange(BIG // 8, dtype=np.int64)
    array_id = client.put(array)
    raw, packed = client.get_buffers([raw_id, array_id])
    assert raw.to_pybytes() == payload and in_shared_memory(raw)
    assert packed.to_pybytes() == array.tobytes() and in_shared_memory(packed)
    assert client.get_buffers([client.put({"x": 1})])[0].size > 0  # a pickle's bytes


def test_create_writes_in_place_and_seal_publishes(client: plasma.PlasmaClient) -> None:
    object_id = plasma.ObjectID.from_random()
    buffer = client.create(object_id, BIG, metadata=b"md")
    assert buffer.is_mutable and buffer.size == BIG and in_shared_memory(buffer)
    assert client.contains(object_id)  # the creator sees it, as in Plasma
    assert client.list()[object_id]["state"] == "created"
    other = plasma.connect(client.store_socket_name)
    try:
        assert not other.contains(object_id)
        memoryview(buffer)[:4] = b"abcd"
        buffer[-1] = 7
        client.seal(object_id)
        [seen] = other.get_buffers([object_id], timeout_ms=1000)
        assert seen.to_pybytes()[:4] == b"abcd" and seen[-1] == 7
        # The creator's buffer and the reader's view are the same shared memory.
        assert in_shared_memory(seen)
        assert other.get_metadata([object_id])[0].to_pybytes() == b"md"
        info = other.list()[object_id]
        assert info["state"] == "sealed" and info["data_size"] == BIG
        assert info["metadata_size"] == 2
    finally:
        other.disconnect()


def test_create_and_seal_errors(client: plasma.PlasmaClient) -> None:
    object_id = plasma.ObjectID.from_random()
    client.create_and_seal(object_id, b"xyz", b"q")
    assert client.get_buffers([object_id], with_meta=True)[0][0] == b"q"
    with pytest.raises(plasma.PlasmaObjectExists) as raised:
        client.create(object_id, 8)
    assert isinstance(raised.value, ObjectExists)  # also improv-store's exception
    with pytest.raises(plasma.PlasmaObjectExists):
        client.create_and_seal(object_id, b"again")
    with pytest.raises(TypeError, match="already sealed"):
        client.seal(object_id)
    with pytest.raises(plasma.PlasmaObjectNotFound):
        client.seal(plasma.ObjectID.from_random())
    with pytest.raises(plasma.PlasmaStoreFull):
        client.create(plasma.ObjectID.from_random(), 1 << 40)


def test_contains_delete_hash_release(client: plasma.PlasmaClient) -> None:
    first = client.put_raw_buffer(b"same", metadata=b"m")
    second = client.put_raw_buffer(b"same", metadata=b"m")
    third = client.put_raw_buffer(b"same", metadata=b"n")
    assert client.contains(first)
    assert len(client.hash(first)) == 8
    assert client.hash(first) == client.hash(second) != client.hash(third)
    with pytest.raises(plasma.PlasmaObjectNotFound):
        client.hash(plasma.ObjectID.from_random())
    big = client.put(np.ones(BIG // 8))
    view = client.get(big)
    client.release(big)  # gives the lease back at once
    assert client.store.release(view) is False  # nothing left to release
    client.delete([first, plasma.ObjectID.from_random()])  # a missing ID is ignored
    assert not client.contains(first) and client.contains(second)
    assert client.get(first, timeout_ms=0) is plasma.ObjectNotAvailable
    # Deleting an object someone reads removes it at once; the reader's view stays valid.
    read_id = client.put(np.full(BIG // 8, 5.0))
    held = client.get(read_id)
    client.delete([read_id])
    assert not client.contains(read_id) and in_shared_memory(held)
    assert client.get(read_id, timeout_ms=0) is plasma.ObjectNotAvailable
    assert float(held.sum()) == 5.0 * (BIG // 8)


def test_metadata_is_limited_by_the_label_size(client: plasma.PlasmaClient) -> None:
    longest = os.urandom(756)
    object_id = client.put_raw_buffer(b"x", metadata=longest)
    assert client.get_metadata([object_id])[0].to_pybytes() == longest
    with pytest.raises(ValueError, match="label"):
        client.put_raw_buffer(b"x", metadata=longest + b"!")


def test_list_capacity_debug_evict(client: plasma.PlasmaClient) -> None:
    object_id = client.put_raw_buffer(b"listed", metadata=b"abc")
    before = time.time()
    info = client.list()[object_id]
    assert set(info) == {
        "data_size", "metadata_size", "ref_count", "create_time", "construct_duration", "state"
    }
    assert info["data_size"] == 6 and info["metadata_size"] == 3 and info["state"] == "sealed"
    assert before - 60 < info["create_time"] <= before
    assert client.store_capacity() == 64 << 20
    assert "capacity: " in client.debug_string()
    assert client.evict(1000) == 0


def test_without_shared_memory_everything_is_copied(
    module_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that does not share the server's /dev/shm (here: told not to use it)."""
    monkeypatch.setenv("IMPROV_STORE_TRANSFER", "inline")
    remote = plasma.connect(module_server.tcp_address)
    try:
        assert not remote.store.colocated
        object_id = plasma.ObjectID.from_random()
        buffer = remote.create(object_id, BIG, metadata=b"tcp")
        assert buffer.is_mutable and not in_shared_memory(buffer)
        buffer[:] = 3
        remote.seal(object_id)
        [(metadata, data)] = remote.get_buffers([object_id], with_meta=True)
        assert metadata == b"tcp" and data.size == BIG and int(data[0]) == 3
        assert not in_shared_memory(data)
        with pytest.raises(plasma.PlasmaObjectExists):
            remote.create(object_id, 4)
        np.testing.assert_array_equal(remote.get(remote.put(np.arange(5))), np.arange(5))
    finally:
        remote.disconnect()


# -- notifications -------------------------------------------------------------------


def test_notifications(client: plasma.PlasmaClient) -> None:
    existing = client.put_raw_buffer(b"before", metadata=b"mm")
    client.subscribe()
    seen: dict[plasma.ObjectID, tuple[int, int]] = {}
    while existing not in seen:  # first every object already stored
        object_id, data_size, metadata_size = client.get_next_notification()
        seen[object_id] = (data_size, metadata_size)
    assert seen[existing] == (6, 2)
    stored = client.put_raw_buffer(b"after!!", metadata=b"m")
    assert client.get_next_notification() == (stored, 7, 1)
    client.delete([stored])
    assert client.get_next_notification() == (stored, -1, -1)
    # The socket carries Plasma's framing: an 8-byte length, then the flatbuffer.
    sock = client.get_notification_socket()
    assert sock.family == socket.AF_UNIX
    third = client.put(b"x")
    (length,) = notifications.LENGTH.unpack(sock.recv(8, socket.MSG_WAITALL))
    ids, data_sizes, metadata_sizes = client.decode_notifications(
        sock.recv(length, socket.MSG_WAITALL)
    )
    assert (ids, data_sizes, metadata_sizes) == ([third], [1], [0])


def test_notification_flatbuffer_reads_plasmas_bytes() -> None:
    # A message captured from pyarrow 11's plasma_store (object b"a" * 20, 8 bytes, 2 of
    # metadata), without its length prefix.
    captured = bytes.fromhex(
        "100000000000000000000600080004000600000004000000010000001800000000001200200004000c"
        "0014000000000000000800120000002c0000001800000008000000000000000200000000000000000000"
        "0008000000e132002709bd24160000000014000000616161616161616161616161616161616161616100"
        "000000"
    )
    assert notifications.decode(captured) == [notifications.Notification(b"a" * 20, 8, 2)]
    message = notifications.encode([
        notifications.Notification(b"b" * 20, 5, 0), notifications.Notification(b"c" * 20, -1, -1)
    ])
    (length,) = notifications.LENGTH.unpack_from(message)
    assert length == len(message) - 8
    assert notifications.decode(message[8:]) == [
        notifications.Notification(b"b" * 20, 5, 0), notifications.Notification(b"c" * 20, -1, -1)
    ]


# -- connecting ----------------------------------------------------------------------


def test_connect_and_disconnect(module_server: ServerProcess, tmp_path: Path) -> None:
    connected = plasma.connect(module_server.socket_path, num_retries=1)
    assert connected.store_socket_name == module_server.socket_path
    connected.put(b"x")
    pending = plasma.ObjectID.from_random()
    connected.create(pending, 16)
    connected.disconnect()  # drops the unsealed creation
    with pytest.raises(OSError, match="Could not connect"):
        plasma.connect(str(tmp_path / "nobody.sock"), num_retries=2)
    again = plasma.connect(module_server.socket_path)
    try:
        assert not again.contains(pending)
    finally:
        again.disconnect()
    with pytest.raises(StoreError):
        connected.put(b"after disconnect")


# -- the same script against real Plasma -------------------------------------------

DIFFERENTIAL_SCRIPT = r"""
import sys, warnings
warnings.simplefilter("ignore")
import numpy as np
if sys.argv[1] == "plasma":
    import pyarrow.plasma as plasma
else:
    import improv_store.plasma as plasma
client = plasma.connect(sys.argv[2])
out = []
ids = [plasma.ObjectID(bytes([i]) * 20) for i in range(1, 6)]
client.put(np.arange(6).reshape(2, 3), ids[0])
client.put({"a": [1, 2], "b": "text"}, ids[1])
client.put_raw_buffer(b"raw data", ids[2], metadata=b"meta")
buf = client.create(ids[3], 4, b"cm")
np.frombuffer(buf, dtype=np.uint8)[:] = [1, 2, 3, 4]
out.append(("contains unsealed", client.contains(ids[3])))
out.append(("state", client.list()[ids[3]]["state"], client.list()[ids[3]]["construct_duration"]))
client.seal(ids[3])
client.create_and_seal(ids[4], b"cas", b"m2")
out.append(("get", client.get(ids[0]).tolist(), client.get(ids[1])))
missing = client.get(plasma.ObjectID(b"\xff" * 20), timeout_ms=0)
out.append(("missing", missing is plasma.ObjectNotAvailable))
out.append(("buffers", [bytes(b) for b in client.get_buffers(ids[2:5])]))
pairs = client.get_buffers(ids[2:5], with_meta=True)
out.append(("with_meta", [(m, bytes(b)) for m, b in pairs]))
out.append(("metadata", [bytes(m) for m in client.get_metadata(ids[2:5])]))
unknown = plasma.ObjectID(b"\xfe" * 20)
out.append(("contains", [client.contains(i) for i in ids], client.contains(unknown)))
listing = client.list()
out.append(("list", sorted(
    (k.binary(), v["data_size"] if k in ids[2:] else None, v["metadata_size"], v["state"])
    for k, v in listing.items()
)))
out.append(("hash", len(client.hash(ids[2])), client.hash(ids[2]) == client.hash(ids[2])))
for exc, call in [
    ("exists", lambda: client.create(ids[2], 8)),
    ("seal unknown", lambda: client.seal(plasma.ObjectID(b"\xfd" * 20))),
    ("sealed twice", lambda: client.seal(ids[3])),
]:
    try:
        call()
        out.append((exc, "no error"))
    except Exception as e:
        names = [c.__name__ for c in type(e).__mro__]
        out.append((exc, [n for n in names if n.startswith(("Plasma", "Type"))][:1]))
client.subscribe()
seen = set()
for _ in range(5):
    seen.add(client.get_next_notification()[0].binary())
out.append(("existing notified", sorted(seen) == sorted(i.binary() for i in ids)))
new = client.put_raw_buffer(b"12345", metadata=b"xy")
out.append(("notify", client.get_next_notification() == (new, 5, 2)))
client.delete([new])
out.append(("notify delete", client.get_next_notification() == (new, -1, -1)))
client.delete([ids[0], plasma.ObjectID(b"\xfc" * 20)])
out.append(("deleted", client.contains(ids[0])))
out.append(("capacity", client.store_capacity()))
# A message improv_store.plasma's notifications.encode wrote, decoded by each client.
ENCODED = bytes.fromhex(
    "100000000600080004000000000000000c00000004000000020000001c0000006800000014001900"
    "04000800100000000000000000001800140000001c00000008000000000000000200000000000000"
    "00000000000000001400000061616161616161616161616161616161616161610014001900040008"
    "00100000000000000000001800000000170000001c00000000000000000000000000000000000000"
    "010000000000000014000000626262626262626262626262626262626262626200"
)
out.append(("decode", client.decode_notifications(ENCODED)))
client.disconnect()
for line in out:
    print(repr(line))
"""


@pytest.mark.skipif(
    os.environ.get("IMPROV_STORE_PLASMA_DIFFERENTIAL") != "1",
    reason="opt-in: IMPROV_STORE_PLASMA_DIFFERENTIAL=1 runs the same script on real Plasma"
    " (needs .venv-plasma with pyarrow 11)",
)
def test_same_script_same_output_as_real_plasma(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    assert PLASMA_PYTHON.exists(), f"{PLASMA_PYTHON} is missing: pip install pyarrow==11.0.0"
    script = tmp_path / "script.py"
    script.write_text(DIFFERENTIAL_SCRIPT)
    plasma_store = PLASMA_PYTHON.parent / "plasma_store"
    plasma_socket = str(tmp_path / "plasma.sock")
    memory = 64 << 20
    store = subprocess.Popen(
        [str(plasma_store), "-s", plasma_socket, "-m", str(memory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(plasma_socket) and time.monotonic() < deadline:
            time.sleep(0.05)
        reference = subprocess.run(
            [str(PLASMA_PYTHON), str(script), "plasma", plasma_socket],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    finally:
        store.kill()
        store.wait(10)
    server = start_server("--memory", str(memory))
    ours = subprocess.run(
        [sys.executable, str(script), "improv", server.socket_path],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert len(reference.splitlines()) == 19
    assert ours.splitlines() == reference.splitlines()
