"""improv's own store tests, ported with only the import and the plasma fixture changed,
plus the LMDB recording store, the launch helper and a three-process improv pipeline."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse import csc_matrix

from improv_store.client import ObjectID, StoreClient
from improv_store.client.improv import (
    CannotConnectToStoreInterfaceError,
    CannotGetObjectError,
    LMDBData,
    LMDBStoreInterface,
    ObjectNotFoundError,
    PlasmaStoreInterface,
    StoreInterface,
)
from improv_store.service import launch

# -- improv's fixtures, with plasma_store replaced by the launch helper ------------------


@pytest.fixture
def set_store_loc(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("s") / "store")


@pytest.fixture
def setup_store(set_store_loc: str) -> Iterator[object]:
    """Start the store as improv's nexus started plasma_store (10 MB)."""
    with launch(set_store_loc, 10_000_000) as server:
        yield server


# -- improv's tests ------------------------------------------------------------------


def test_connect(setup_store: object, set_store_loc: str) -> None:
    store = StoreInterface(store_loc=set_store_loc)
    assert isinstance(store.client, StoreClient)


def test_connect_incorrect_path(setup_store: object, set_store_loc: str) -> None:
    store_loc = "asdf"
    with pytest.raises(CannotConnectToStoreInterfaceError) as e:
        store = StoreInterface(store_loc=store_loc)
        store.connect_store(store_loc)
    assert e.value.message == f"Cannot connect to store at {store_loc!s}"


def test_connect_none_path(setup_store: object) -> None:
    store_loc = None
    with pytest.raises(CannotConnectToStoreInterfaceError) as e:
        store = StoreInterface(store_loc=store_loc)
        store.connect_store(store_loc)
    assert e.value.message == f"Cannot connect to store at {store_loc!s}"


def test_init_empty(setup_store: object, set_store_loc: str) -> None:
    store = StoreInterface(store_loc=set_store_loc)
    assert store.get_all() == {}


def test_is_csc_matrix_and_put(setup_store: object, set_store_loc: str) -> None:
    row = np.array([0, 0, 1, 2, 2, 2])
    col = np.array([0, 2, 2, 0, 1, 2])
    data = np.array([1, 2, 3, 4, 5, 6])
    csc = csc_matrix((data, (row, col)), shape=(3, 3)).toarray()
    store = StoreInterface(store_loc=set_store_loc)
    obj_id = store.put(csc, "csc")
    assert isinstance(store.getID(obj_id), csc_matrix) or np.array_equal(store.getID(obj_id), csc)
    sparse = csc_matrix((data, (row, col)), shape=(3, 3))
    sparse_id = store.put(sparse, "sparse")
    assert isinstance(store.getID(sparse_id), csc_matrix)
    assert (store.getID(sparse_id) != sparse).nnz == 0


def test_put_get(setup_store: object, set_store_loc: str) -> None:
    store = StoreInterface(store_loc=set_store_loc)
    obj_id = store.put(1, "one")
    assert store.getID(obj_id) == 1
    assert store.get("one") == 1
    assert len(obj_id.binary()) == 20


def test_reset(setup_store: object, set_store_loc: str) -> None:
    store = StoreInterface(store_loc=set_store_loc)
    store.reset()
    obj_id = store.put(1, "one")
    assert store.getID(obj_id) == 1


def test_get_list_and_all(setup_store: object, set_store_loc: str) -> None:
    store = StoreInterface(store_loc=set_store_loc)
    id1 = store.put(1, "one")
    id2 = store.put(2, "two")
    id3 = store.put(3, "three")
    assert store.getList([id1, id2]) == [1, 2]
    listing = store.get_all()
    assert set(listing) == {id1, id2, id3}
    assert all(info["data_size"] > 0 for info in listing.values())


def test_get_nonexistent(setup_store: object, set_store_loc: str) -> None:
    store = StoreInterface(store_loc=set_store_loc)
    with pytest.raises(CannotGetObjectError):
        store.get("never-stored")
    missing = store.random_ObjectID()[0]
    with pytest.raises(ObjectNotFoundError) as e:
        store.getID(missing)
    assert e.value.message == f'Cannnot find object with ID/name "{missing}"'


# -- beyond improv's tests: the rest of the documented API ---------------------------------


def test_objects_improv_stores_round_trip(setup_store: object, set_store_loc: str) -> None:
    """Frames (uint16, float32 Fortran), sparse matrices, lists of dicts, tuples, ints."""
    store = PlasmaStoreInterface(name="Processor", store_loc=set_store_loc)
    frame = np.arange(512 * 512, dtype=np.uint16).reshape(512, 512)
    fortran = np.asfortranarray(np.random.default_rng(0).random((256, 128), dtype=np.float32))
    records = [{"frame": np.ones((4, 4)), "t": 0.5}, {"frame": np.zeros(3), "t": 1.0}]
    for obj in (frame, fortran, (1, "a", 2.0), 7, records):
        back = store.getID(store.put(obj, "x"))
        if isinstance(obj, np.ndarray):
            assert back.dtype == obj.dtype and np.array_equal(back, obj)
            assert back.flags.f_contiguous == obj.flags.f_contiguous
        elif obj is records:
            assert [r["t"] for r in back] == [0.5, 1.0]
            assert np.array_equal(back[0]["frame"], records[0]["frame"])
        else:
            assert back == obj
    view = store.getID(store.put(frame, "frame"))
    assert not view.flags.owndata and not view.flags.writeable  # zero copy from shm


def test_stored_names_replace_delete(setup_store: object, set_store_loc: str) -> None:
    store = StoreInterface(store_loc=set_store_loc)
    first = store.put({"gain": 1}, "params")
    store.updateStoreInterfaced("params", first)
    assert store.getStored() == {"params": first}
    second = store.replace({"gain": 2}, "params")
    assert store.get("params") == {"gain": 2}
    with pytest.raises(ObjectNotFoundError):
        store.getID(first)
    store.delete(second)
    with pytest.raises(ObjectNotFoundError):
        store.delete(second)
    ids = store.random_ObjectID(3)
    assert len(set(ids)) == 3 and all(len(i.binary()) == 20 for i in ids)
    assert pickle.loads(pickle.dumps(ids[0])) == ids[0]


def test_subscribe_and_notify(setup_store: object, set_store_loc: str) -> None:
    store = StoreInterface(store_loc=set_store_loc)
    assert store.notify() is None
    store.subscribe()
    obj_id = store.put(np.zeros(100), "z")
    deadline = time.monotonic() + 10
    while (note := store.notify()) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert note == (obj_id, 800, 0)
    assert store.notify() is None


def test_side_recording_to_lmdb(setup_store: object, set_store_loc: str, tmp_path: Path) -> None:
    """use_lmdb records every put; getID(..., hdd_only=True) reads the recording."""
    store = PlasmaStoreInterface(store_loc=set_store_loc, use_lmdb=True,
                                 lmdb_path=str(tmp_path), lmdb_name="rec", flush_immediately=True)
    obj_id = store.put(np.arange(5), "acq_1")
    assert np.array_equal(store.getID(obj_id, hdd_only=True), np.arange(5))
    store.delete(obj_id)
    assert np.array_equal(store.getID(obj_id), np.arange(5))  # falls back to the recording


# -- LMDBStoreInterface ----------------------------------------------------------------------


def test_lmdb_round_trip_with_metadata(tmp_path: Path) -> None:
    lmdb_store = LMDBStoreInterface(path=str(tmp_path), name="run", commit_freq=0.05)
    obj_id = ObjectID.random()
    lmdb_store.put(np.arange(10), "frame", obj_id=obj_id, flush_this_immediately=True)
    assert np.array_equal(lmdb_store.get(obj_id), np.arange(10))
    record = lmdb_store.get(obj_id, include_metadata=True)
    assert isinstance(record, LMDBData) and record.name == "frame" and not record.is_queue
    assert record.queue is None
    assert lmdb_store.get([obj_id, obj_id.binary()])[1].shape == (10,)
    lmdb_store.flush()


def test_lmdb_queue_names_and_commit_thread(tmp_path: Path) -> None:
    lmdb_store = LMDBStoreInterface(path=str(tmp_path), name="q", commit_freq=0.05)
    lmdb_store.put("signal", "q__Acquirer.q_out__124")
    lmdb_store.put({"gain": 1}, "config")
    deadline = time.monotonic() + 10
    while len(lmdb_store.get_keys()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    keys = lmdb_store.get_keys()
    assert len(keys) == 2
    records = [lmdb_store.get(key, include_metadata=True) for key in keys]
    queues = {r.queue for r in records if r.name.startswith("q_")}
    assert queues == {"q_out"} and all(r.is_queue for r in records)
    lmdb_store.flush()


def test_lmdb_load_reopens_and_delete_missing_raises(tmp_path: Path) -> None:
    writer = LMDBStoreInterface(path=str(tmp_path), name="keep", flush_immediately=True)
    obj_id = ObjectID.random()
    writer.put([1, 2, 3], "numbers", obj_id=obj_id)
    writer.flush()
    reader = LMDBStoreInterface(path=str(tmp_path), name="keep", load=True)
    assert reader.get(obj_id) == [1, 2, 3]
    reader.replace([4], "numbers", obj_id)
    assert reader.get(obj_id) == [4]
    updates = reader.subscribe()
    reader.put("new", "other", obj_id=ObjectID.random(), flush_this_immediately=True)
    assert next(updates).obj == "new"
    reader.delete(obj_id)
    with pytest.raises(ObjectNotFoundError):
        reader.delete(obj_id)
    with pytest.raises(ObjectNotFoundError):
        reader.get(obj_id)
    reader.flush()
    with pytest.raises(FileNotFoundError):
        LMDBStoreInterface(path=str(tmp_path), name="absent", load=True)


# -- launch helper and the example pipeline --------------------------------------------------


def test_launch_stops_cleanly(tmp_path: Path) -> None:
    store_loc = str(tmp_path / "store")
    server = launch(store_loc, 64 << 20)
    assert os.path.exists(store_loc)
    assert server.stop() == 0
    assert not os.path.exists(store_loc)


def test_three_process_pipeline_loses_no_frame() -> None:
    """The README's improv pipeline: 10 s at 30 Hz, every frame shown, in order."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "improv-pipeline"
    result = subprocess.run(
        [sys.executable, str(script), "--seconds", "10", "--rate", "30", "--quiet"],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 lost, in order: True" in result.stdout
    acquired = int(result.stdout.split("frames: ")[1].split(" acquired")[0])
    assert acquired >= 250
