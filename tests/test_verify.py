"""``improv-store verify``: every stored payload checked on disk against its size and CRC32C.

verify exits 0 on a sound store, 1 naming each damaged object by ID and name, 2 when the
directory cannot be read; it runs on a stopped server's data and beside a running server.
Reads of a corrupt payload fail with DataCorrupted naming the object: inline Get and
get_many are covered by test_durability.py::test_corruption_on_disk_is_detected, the
streamed and shared-memory reads here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import pytest
from conftest import ServerProcess, corrupt_payload, edit_store

from improv_store.client import DataCorrupted, ObjectID, StoreClient
from improv_store.service.lmdb_backend import DataDirectoryReader

CLI = os.path.join(os.path.dirname(sys.executable), "improv-store")
MiB = 1 << 20
CLEAN, CORRUPT, CANNOT_OPEN = 0, 1, 2


def verify(data_dir: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run ``improv-store verify --data-dir data_dir`` as a separate process."""
    return subprocess.run(
        [CLI, "verify", "--data-dir", data_dir, *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )


def verify_json(data_dir: str) -> tuple[int, dict[str, Any]]:
    """The exit code and the parsed report of ``verify --json``."""
    result = verify(data_dir, "--json")
    return result.returncode, json.loads(result.stdout)


def store_assorted(store: StoreClient) -> dict[ObjectID, str]:
    """Objects of every shape verify meets: arrays, bytes, empty, unnamed, large (streamed or
    in shared memory), replaced and deleted ones. Returns the live ones with their names."""
    rng = np.random.default_rng(7)
    live = {
        store.put(np.arange(1000.0), name="array"): "array",
        store.put(b"raw bytes", name="bytes"): "bytes",
        store.put(b"", name="empty"): "empty",
        store.put(rng.bytes(1000)): "",
        store.put(rng.bytes(6 * MiB), name="large"): "large",
    }
    store.put(1, name="params")
    live[store.replace("params", 2)] = "params"
    store.delete(store.put(b"deleted", name="gone"))
    return live


def test_sound_store_verifies_clean(start_server: Callable[..., ServerProcess]) -> None:
    """verify of a stopped server's data: exit 0 and a summary counting every live object and
    its bytes; --json says the same."""
    server = start_server(durability="sync")
    with server.client() as store:
        live = store_assorted(store)
        total = sum(info.size for info in store.list())
    assert server.stop() == 0

    result = verify(server.data_dir)
    assert result.returncode == CLEAN, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"verified {len(live)} objects, {total} bytes ({total / MiB:.1f} MiB) in"
        f" {server.data_dir}: 0 corrupt"
    ]
    code, report = verify_json(server.data_dir)
    assert code == CLEAN
    assert report == {
        "data_dir": server.data_dir,
        "objects": len(live),
        "bytes": total,
        "clean": True,
        "damaged": None,
        "logged": 0,
        "corrupt": [],
    }


def test_corrupt_payloads_are_named_by_verify_and_by_every_read(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Flipped bytes in three payloads: verify exits 1 listing exactly those three by ID and
    name; after a restart, reading any of them inline, streamed or through shared memory is
    DataCorrupted naming it, while their neighbours read back intact."""
    server = start_server(durability="sync")
    rng = np.random.default_rng(11)
    neighbours = {name: rng.bytes(size) for name, size in (("small", 8000), ("huge", 6 * MiB))}
    with server.client() as store:
        victims = {
            store.put(rng.bytes(8000), name="victim"): "victim",
            store.put(rng.bytes(6 * MiB), name="big victim"): "big victim",
            store.put(rng.bytes(100)): "",
        }
        for name, data in neighbours.items():
            store.put(data, name=name)
    assert server.stop() == 0
    for object_id in victims:
        corrupt_payload(server.data_dir, object_id)

    result = verify(server.data_dir)
    assert result.returncode == CORRUPT
    summary, *lines = result.stdout.splitlines()
    assert summary.startswith("verified 5 objects,") and summary.endswith(": 3 corrupt")
    expected = {
        f"corrupt {object_id.hex()} {name or '(unnamed)'}: its CRC32C is"
        for object_id, name in victims.items()
    }
    assert {line.split(" 0x")[0] for line in lines} == expected
    code, report = verify_json(server.data_dir)
    assert (code, report["objects"], report["clean"]) == (CORRUPT, 5, False)
    assert {(entry["id"], entry["name"]) for entry in report["corrupt"]} == {
        (object_id.hex(), name) for object_id, name in victims.items()
    }

    restarted = start_server(durability="sync", data_dir=server.data_dir)
    big = next(object_id for object_id, name in victims.items() if name == "big victim")
    small = next(object_id for object_id, name in victims.items() if name == "victim")
    with (
        restarted.client(transfer="inline") as inline,
        restarted.client(transfer="shm") as colocated,
    ):
        assert colocated.colocated
        for store in (inline, colocated):
            for object_id, name in ((small, "victim"), (big, "big victim")):
                with pytest.raises(DataCorrupted) as failure:
                    store.get(object_id)  # big by the inline client: GetStream
                assert object_id.hex() in failure.value.message
                assert f"({name})" in failure.value.message
        for store in (inline, colocated):
            for name, data in neighbours.items():
                assert store.get(name) == data
    assert verify(restarted.data_dir).returncode == CORRUPT  # beside the running server


def test_every_kind_of_damage_is_reported(start_server: Callable[..., ServerProcess]) -> None:
    """A missing payload, a truncated one, a payload without metadata and metadata that cannot
    be parsed are each reported with what is wrong; the sound objects are not."""
    server = start_server(durability="sync")
    with server.client() as store:
        ids = [store.put(os.urandom(1000), name=f"object{i}") for i in range(6)]
    assert server.stop() == 0
    missing, truncated, orphaned, unreadable = (object_id.binary() for object_id in ids[:4])
    with edit_store(server.data_dir) as (txn, payloads, objects):
        txn.delete(missing, db=payloads)
        txn.put(truncated, txn.get(truncated, db=payloads)[:999], db=payloads)
        txn.delete(orphaned, db=objects)
        txn.put(unreadable, b"\xff" * 16, db=objects)

    code, report = verify_json(server.data_dir)
    assert code == CORRUPT
    problems = {bytes.fromhex(entry["id"]): entry for entry in report["corrupt"]}
    assert problems.keys() == {missing, truncated, orphaned, unreadable}
    assert problems[missing]["problem"] == "its payload is missing"
    assert problems[missing]["name"] == "object0"
    assert problems[truncated]["problem"] == "the payload is 999 bytes, its metadata says 1000"
    assert problems[orphaned]["problem"] == "a payload without metadata"
    assert problems[unreadable]["problem"].startswith("its metadata cannot be read")
    assert report["objects"] == 5  # every metadata entry, the orphaned payload's aside


def test_unreadable_directories_exit_2(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A missing directory, one a memory-only server used, and a data.mdb that is not LMDB
    cannot be verified: exit 2 with the reason, and nothing is created."""
    server = start_server(durability="none")
    assert server.stop() == 0
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "data.mdb").write_bytes(os.urandom(64 << 10))
    for data_dir in (str(tmp_path / "nowhere"), server.data_dir, str(garbage)):
        result = verify(data_dir)
        assert result.returncode == CANNOT_OPEN, result.stdout
        assert f"cannot open the data directory {data_dir}" in result.stderr
        code, report = verify_json(data_dir)
        assert code == CANNOT_OPEN and "error" in report
    assert not os.path.exists(tmp_path / "nowhere")
    assert not os.path.exists(os.path.join(server.data_dir, "data.mdb"))


def test_verify_beside_a_running_server(start_server: Callable[..., ServerProcess]) -> None:
    """A reader opened before the server grows its map past the reader's keeps reading (it
    adopts the new size), and verify runs clean while puts go on."""
    server = start_server("--initial-map-size", "1M", durability="sync")
    payloads: dict[ObjectID, int] = {}
    with server.client() as store:
        payloads[store.put(b"first")] = crc32c.crc32c(b"first")
        with DataDirectoryReader(server.data_dir) as reader:
            for _ in range(48):
                data = os.urandom(MiB // 2)
                payloads[store.put(data)] = crc32c.crc32c(data)
            assert os.path.getsize(os.path.join(server.data_dir, "data.mdb")) > 24 * MiB
            checked = list(reader.check_objects())
        assert {ObjectID(c.object_id) for c in checked} == payloads.keys()
        assert all(c.problem is None for c in checked)

        stop = threading.Event()

        def keep_putting() -> None:
            while not stop.is_set():
                store.put(os.urandom(256 << 10))

        writer = threading.Thread(target=keep_putting)
        writer.start()
        try:
            for _ in range(3):
                result = verify(server.data_dir)
                assert result.returncode == CLEAN, result.stdout + result.stderr
        finally:
            stop.set()
            writer.join()
