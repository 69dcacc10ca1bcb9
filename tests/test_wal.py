"""The write-ahead log of ``sync`` mode: its records, and recovery from it after SIGKILL."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import crc32c
import lmdb
import numpy as np
import pytest
from test_verify import CLEAN, verify_json

from improv_store.client import ObjectNotFound
from improv_store.service import wal
from improv_store.service.backend import Change
from improv_store.v1 import store_pb2 as pb

KEEP_LOGGED = ("--log-apply-interval", "3600")  # nothing logged reaches LMDB before the kill


def put_change(sequence: int, payload: bytes, **labels: str) -> Change:
    meta = pb.ObjectMeta(id=os.urandom(20), size=len(payload), sequence=sequence, labels=labels,
                         crc32c=crc32c.crc32c(payload))
    return Change(event=pb.Event(sequence=sequence, type=pb.EVENT_TYPE_PUT, meta=meta),
                  stored=(meta, payload))


def delete_change(sequence: int, object_id: bytes) -> Change:
    event = pb.Event(sequence=sequence, type=pb.EVENT_TYPE_DELETE,
                     meta=pb.ObjectMeta(id=object_id))
    return Change(event=event, removed=[object_id])


def as_tuples(changes: list[Change]) -> list[tuple[Any, ...]]:
    return [
        (c.event.SerializeToString(),
         None if c.stored is None else (c.stored[0].SerializeToString(), bytes(c.stored[1])),
         list(c.removed))
        for c in changes
    ]


def test_records_read_back_as_written(tmp_path: Path) -> None:
    """Puts (with labels, from a memoryview as the arena gives them), deletes and a
    replace's removals come back from the file exactly, in order; a put whose object is
    deleted later in the same record keeps no payload (its memory may be reused)."""
    path = str(tmp_path / "wal")
    log = wal.WriteAheadLog(path, 1 << 20, generation=7)
    first = put_change(1, b"frame", kind="image")
    replacing = put_change(2, memoryview(bytearray(b"x" * 5000)))
    replacing.removed = [first.stored[0].id]  # type: ignore[index]
    brief = put_change(4, b"gone before its batch was logged")
    batches = [[first], [replacing], [delete_change(3, replacing.stored[0].id)],  # type: ignore[index]
               [brief, delete_change(5, brief.stored[0].id)]]  # type: ignore[index]
    for batch in batches:
        assert log.append(batch)
    brief.stored = (brief.stored[0], b"")  # type: ignore[index]
    log.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.path.getsize(path) == 1 << 20  # preallocated: appends change no metadata
    assert as_tuples(wal.read(path, 7)) == as_tuples([c for batch in batches for c in batch])
    assert wal.read(path, 8) == [] and wal.read(str(tmp_path / "absent"), 1) == []


def test_reading_stops_at_a_torn_record_and_at_an_older_generation(tmp_path: Path) -> None:
    path = str(tmp_path / "wal")
    log = wal.WriteAheadLog(path, 1 << 20, generation=1)
    batches = [[put_change(n, os.urandom(100))] for n in range(1, 4)]
    for batch in batches:
        log.append(batch)
    with open(path, "r+b") as file:  # damage the last record's body, as a torn write would
        data = file.read()
        at = data.rindex(bytes(batches[2][0].stored[1]))  # type: ignore[index]
        file.seek(at)
        file.write(b"\xff" * 10)
    assert as_tuples(wal.read(path, 1)) == as_tuples(batches[0] + batches[1])

    log.restart(2)  # in the other half: generation 1 stays readable while LMDB takes it
    second = [put_change(4, b"second")]
    log.append(second)
    assert as_tuples(wal.read(path, 1)) == as_tuples(batches[0] + batches[1])
    log.restart(3)  # LMDB has generation 1: its half starts over
    fresh = [put_change(5, b"new")]
    log.append(fresh)
    log.close()
    # The generation-1 records still after it are not taken for generation 3.
    assert as_tuples(wal.read(path, 3)) == as_tuples(fresh)
    assert wal.read(path, 1) == []
    assert as_tuples(wal.read(path, 2)) == as_tuples(second)


def test_recovery_finds_the_generation_being_applied_and_the_next(tmp_path: Path) -> None:
    """While LMDB takes one generation, the next is appended in the other half: a crash
    then leaves two generations beyond LMDB, both replayed, oldest first; one that LMDB
    already holds is not."""
    path = str(tmp_path / "wal")
    log = wal.WriteAheadLog(path, 1 << 20, generation=5)
    applying = [[put_change(1, b"a")], [put_change(2, b"b")]]
    for batch in applying:
        log.append(batch)
    log.restart(6)
    appended_meanwhile = [put_change(3, b"c")]
    log.append(appended_meanwhile)
    log.close()
    found = wal.read_after(path, 4)
    assert [generation for generation, _ in found] == [5, 6]
    assert as_tuples(found[0][1]) == as_tuples(applying[0] + applying[1])
    assert as_tuples(found[1][1]) == as_tuples(appended_meanwhile)
    assert [generation for generation, _ in wal.read_after(path, 5)] == [6]
    assert wal.read_after(path, 6) == []


def test_a_record_that_does_not_fit_is_refused_whole(tmp_path: Path) -> None:
    path = str(tmp_path / "wal")
    log = wal.WriteAheadLog(path, 4096, generation=1)
    assert log.append([put_change(1, b"a" * 1000)])
    used = log.used
    assert not log.append([put_change(2, b"b" * 4000)])
    assert log.used == used
    log.close()
    assert len(wal.read(path, 1)) == 1


def objects_in_lmdb(data_dir: str) -> int:
    env = lmdb.open(data_dir, max_dbs=4, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return txn.stat(env.open_db(b"objects", txn=txn, create=False))["entries"]
    finally:
        env.close()


@pytest.mark.parametrize("wal_size", ["4M", "0"], ids=["logged", "no-log"])
def test_sync_sigkill_before_the_log_reaches_lmdb_loses_nothing(
    start_server: Any, wal_size: str
) -> None:
    """sync: puts, a replace and deletes acknowledged before SIGKILL are all back after a
    restart, with their history, also when none of them had reached LMDB; a second crash
    right after the restart does not apply the log twice."""
    server = start_server(*KEEP_LOGGED, "--wal-size", wal_size, durability="sync")
    with server.client() as store:
        kept = {store.put(np.full(300, i), name=f"kept{i}"): i for i in range(40)}
        gone = [store.put(b"brief", name="gone") for _ in range(5)]
        big = store.put(np.arange(1 << 17), name="big")  # 1 MiB: straight to LMDB
        for object_id in gone:
            store.delete(object_id)
        first = store.put(b"v1", name="latest")
        second = store.replace("latest", b"v2")
        last = store.info().last_sequence
    server.kill()
    if wal_size != "0":
        # Only the 1 MiB put, and the 45 puts logged before it, went to LMDB.
        assert objects_in_lmdb(server.data_dir) == 40 + 5 + 1
        assert os.path.getsize(Path(server.data_dir) / "wal") == 4 << 20
    returncode, report = verify_json(server.data_dir)
    assert returncode == CLEAN
    # Logged after the 1 MiB put: 5 deletes, a put and a replace.
    assert report["logged"] == (7 if wal_size != "0" else 0)

    for attempt in range(2):
        restarted = start_server(*KEEP_LOGGED, "--wal-size", wal_size, durability="sync",
                                 data_dir=server.data_dir)
        with restarted.client() as store:
            for object_id, value in kept.items():
                assert (store.get(object_id) == value).all()
            assert (store.get(big) == np.arange(1 << 17)).all()
            for object_id in [*gone, first]:
                with pytest.raises(ObjectNotFound):
                    store.get(object_id)
            assert store.get("latest") == b"v2" and store.stat("latest").id == second
            info = store.info()
            assert info.object_count == len(kept) + 2 and info.last_sequence >= last
            with store.subscribe(since=last) as history:
                assert next(iter(history)).type == "replace"
        if attempt == 0 and wal_size != "0":
            assert "applied" in restarted.log() and "write-ahead log" in restarted.log()
        restarted.kill()


def test_sync_sigkill_while_the_log_is_applied_loses_nothing(start_server: Any) -> None:
    """A crash while LMDB takes one generation of the log and the next is being appended
    in the other half: both are replayed at the next start. The second generation is
    written here as the server writes it, after the first one the killed server logged."""
    server = start_server(*KEEP_LOGGED, durability="sync")
    with server.client() as store:
        kept = {store.put(f"logged {i}".encode()): i for i in range(10)}
        last = store.info().last_sequence
    server.kill()
    payload = b"appended while generation 1 went to LMDB"
    meta = pb.ObjectMeta(id=os.urandom(20), name="later", size=len(payload),
                         encoding=pb.ENCODING_RAW, crc32c=crc32c.crc32c(payload),
                         sequence=last + 1)
    later = Change(event=pb.Event(sequence=last + 1, type=pb.EVENT_TYPE_PUT, meta=meta),
                   stored=(meta, payload))
    log = wal.WriteAheadLog(str(Path(server.data_dir) / "wal"), 4 << 20, generation=2)
    assert log.append([later])
    log.close()

    restarted = start_server(*KEEP_LOGGED, durability="sync", data_dir=server.data_dir)
    with restarted.client() as store:
        for object_id, i in kept.items():
            assert store.get(object_id) == f"logged {i}".encode()
        assert store.get("later") == payload
        assert store.info().last_sequence > last
    assert restarted.stop() == 0
    assert objects_in_lmdb(server.data_dir) == len(kept) + 1


def test_sync_puts_beyond_memory_apply_the_log_to_evict(start_server: Any) -> None:
    """sync with a long interval: when the arena is full of logged objects, the log is
    applied to LMDB at once so they can be evicted, and every put still succeeds."""
    server = start_server(*KEEP_LOGGED, "--memory", "8M", durability="sync")
    with server.client() as store:
        ids = {store.put(np.full(100 << 10, i % 251, dtype=np.uint8)): i for i in range(200)}
        for object_id, i in ids.items():
            value = store.get(object_id)
            assert (value == i % 251).all()
            store.release(value)
    assert server.stop() == 0
    assert objects_in_lmdb(server.data_dir) == 200
