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

import lmdb
import numpy as np
import pytest
from scipy.sparse import csc_matrix

from improv_store.client import ObjectID, StoreClient
from improv_store.client.errors import ObjectExists
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


def test_get_all_entries_have_plasma_list_fields(setup_store: object, set_store_loc: str) -> None:
    """improv's get_all is Plasma's list(): construct_duration and whole-second create_time."""
    store = StoreInterface(store_loc=set_store_loc)
    obj_id = store.put(np.zeros(10), "z")
    entry = store.get_all()[obj_id]
    assert set(entry) == {"data_size", "metadata_size", "ref_count", "create_time",
                          "construct_duration", "state", "name"}
    assert entry["construct_duration"] == 0 and entry["state"] == "sealed"
    assert isinstance(entry["create_time"], int) and entry["create_time"] > 1_600_000_000
    assert entry["data_size"] == 80 and entry["name"] == "z"


def test_use_hdd_and_setup_lmdb(setup_store: object, set_store_loc: str, tmp_path: Path) -> None:
    """improv 0.2's use_hdd switch: off by default, set by _setup_LMDB; off stops recording."""
    store = StoreInterface(store_loc=set_store_loc)
    assert store.use_hdd is False and store.lmdb_store is None
    unrecorded = store.put(1, "before")
    store._setup_LMDB(use_lmdb=True, lmdb_path=str(tmp_path), lmdb_name="rec",
                      flush_immediately=True)
    assert store.use_hdd is True and store.flush_immediately is True
    recorded = store.put(2, "during")
    assert store.getID(recorded, hdd_only=True) == 2
    with pytest.raises(ObjectNotFoundError):
        store.getID(unrecorded, hdd_only=True)
    store.use_hdd = False  # what improv's replayer does
    after = store.put(3, "after")
    assert store.getID(after) == 3
    with pytest.raises(ObjectNotFoundError):  # the recording is not read either
        store.getID(recorded, hdd_only=True)
    store.use_hdd = True
    with pytest.raises(ObjectNotFoundError):
        store.getID(after, hdd_only=True)
    assert store.lmdb_store is not None
    store.lmdb_store.flush()


def test_use_hdd_as_improvs_nexus_passes_it(
    setup_store: object, set_store_loc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """improv 0.2's nexus creates StoreInterface(name, loc, use_hdd=True, lmdb_name=...)."""
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")  # lmdb_path defaults to ../outputs/, as in improv
    store = StoreInterface("Processor", set_store_loc, use_hdd=True,
                           lmdb_name="nexus", flush_immediately=True)
    assert store.use_hdd is True and store.lmdb_store is not None
    assert (tmp_path / "outputs" / "nexus" / "data.mdb").exists()
    obj_id = store.put([1, 2], "x")
    assert store.getID(obj_id, hdd_only=True) == [1, 2]
    store.lmdb_store.flush()


def test_internal_put_and_get(setup_store: object, set_store_loc: str) -> None:
    """improv's StoreInterface_internalPutGet tests: _put under a chosen ID, _get by stored name."""
    store = StoreInterface(store_loc=set_store_loc)
    chosen = store.random_ObjectID(1)[0]
    assert store._put(1, chosen) == chosen
    assert store.client.get(chosen) == 1
    with pytest.raises(ObjectExists):
        store._put(2, chosen)
    obj_id = store.put(1, "one")
    store.updateStoreInterfaced("one", obj_id)
    assert store._get("one") == 1
    with pytest.raises(ObjectNotFoundError) as e:
        store._get("three")
    assert e.value.name == "ObjectNotFoundError"
    assert e.value.message == 'Cannnot find object with ID/name "three"'
    store.delete(obj_id)
    with pytest.raises(ObjectNotFoundError):
        store._get("one")


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


def test_lmdb_keys_as_improv_0_2(tmp_path: Path) -> None:
    """Queue records under the name alone (a later put replaces), others by ID or else name."""
    lmdb_store = LMDBStoreInterface(path=str(tmp_path), name="k", flush_immediately=True)
    lmdb_store.put("first", "q__Acquirer.q_out__124")
    lmdb_store.put("second", "q__Acquirer.q_out__124")
    obj_id = ObjectID.random()
    lmdb_store.put(np.arange(3), "frame", obj_id=obj_id)
    lmdb_store.put({"a": 1}, "unnamed_id")
    assert sorted(lmdb_store.get_keys()) == sorted(
        [b"q__Acquirer.q_out__124", obj_id.binary(), b"unnamed_id"])
    assert lmdb_store.get(b"q__Acquirer.q_out__124") == "second"
    assert lmdb_store.get("q__Acquirer.q_out__124", include_metadata=True).queue == "q_out"
    assert lmdb_store.get("unnamed_id") == {"a": 1}
    lmdb_store.flush()
    with lmdb.open(str(tmp_path / "k"), readonly=True) as env, env.begin() as txn:
        record = pickle.loads(txn.get(b"q__Acquirer.q_out__124"))  # what a reading tool does
    assert record.obj == "second" and record.is_queue


def test_lmdb_reads_queue_records_keyed_by_name_and_time(tmp_path: Path) -> None:
    """Files written by earlier versions (name + pickled time keys) are read by name: the newest."""
    path = tmp_path / "old"
    with lmdb.open(str(path), map_size=1 << 24) as env, env.begin(write=True) as txn:
        for obj, stamp, protocol in (("older", 100.0, 4), ("newest", 300.0, 2),
                                     ("middle", 200.0, 5)):
            record = LMDBData(obj=obj, time=stamp, name="q_in", is_queue=True)
            txn.put(b"q_in" + pickle.dumps(stamp, protocol=protocol), pickle.dumps(record))
        other = LMDBData(obj="other queue", time=400.0, name="q_inner", is_queue=True)
        txn.put(b"q_inner" + pickle.dumps(400.0), pickle.dumps(other))
    reader = LMDBStoreInterface(path=str(tmp_path), name="old", load=True)
    assert reader.get("q_in") == "newest"
    assert reader.get(b"q_in", include_metadata=True).time == 300.0
    assert reader.get("q_inner") == "other queue"
    with pytest.raises(ObjectNotFoundError):
        reader.get("q_i")
    reader.put("now", "q_in", flush_this_immediately=True)
    assert reader.get("q_in") == "now"  # the name's own key comes first
    reader.flush()


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
