"""LMDB persistence: payloads, metadata, the event log and the sequence counter.

One LMDB environment holds four named databases:

- ``payloads``: object ID -> payload bytes
- ``objects``:  object ID -> serialized ObjectMeta
- ``events``:   big-endian sequence -> serialized Event (the Subscribe history)
- ``state``:    counters (last committed sequence, reserved sequences, trimmed history)

Every change is written with its event in the same transaction, so the disk
never holds an object without the event that created it or the reverse.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import crc32c
import grpc
import lmdb

from improv_store.v1 import store_pb2 as pb

from .errors import StoreError, exhausted, history_gone

log = logging.getLogger(__name__)

_U64 = struct.Struct(">Q")
_LAST_SEQUENCE = b"last_sequence"
_RESERVED_SEQUENCE = b"reserved_sequence"
_TRIMMED_THROUGH = b"trimmed_through"
_PAGE_OVERHEAD = 4096


@dataclass
class Change:
    """One mutation as it goes to disk: the event plus what it stores and removes."""

    event: pb.Event
    stored: tuple[pb.ObjectMeta, bytes | memoryview] | None = None
    removed: Sequence[bytes] = field(default_factory=tuple)

    @property
    def payload_bytes(self) -> int:
        return len(self.stored[1]) if self.stored else 0


def _outlived(changes: Sequence[Change]) -> set[int]:
    """Positions of changes storing an object that a later change in ``changes`` removes."""
    last_removal: dict[bytes, int] = {}
    for position, change in enumerate(changes):
        for object_id in change.removed:
            last_removal[object_id] = position
    if not last_removal:
        return set()
    return {
        position
        for position, change in enumerate(changes)
        if change.stored is not None and last_removal.get(change.stored[0].id, -1) > position
    }


@dataclass
class Recovered:
    """What a restart finds on disk."""

    objects: list[pb.ObjectMeta]
    last_sequence: int
    trimmed_through: int


class _ResizeLock:
    """Shared for transactions, exclusive for growing the map.

    LMDB requires that no transaction is open in the process while the map
    size changes; everything else may run concurrently.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._resizing = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class LmdbBackend:
    """The on-disk half of the store. Thread-safe; one writer thread calls ``write``."""

    def __init__(self, path: str, *, initial_map_size: int, event_retention: int) -> None:
        os.makedirs(path, exist_ok=True)
        self._lock_file = _lock_directory(path)
        self.path = path
        self._event_retention = event_retention
        existing = os.path.join(path, "data.mdb")
        size_on_disk = os.path.getsize(existing) if os.path.exists(existing) else 0
        self._env = lmdb.open(
            path,
            map_size=max(initial_map_size, 2 * size_on_disk),
            max_dbs=4,
            sync=True,
            metasync=True,
            readahead=False,
            max_readers=512,
        )
        self._payloads = self._env.open_db(b"payloads")
        self._objects = self._env.open_db(b"objects")
        self._events = self._env.open_db(b"events")
        self._state = self._env.open_db(b"state")
        self._resize = _ResizeLock()
        self.trimmed_through = self._read_counter(_TRIMMED_THROUGH)

    # -- recovery -----------------------------------------------------------------

    def recover(self) -> Recovered:
        """Read back every object's metadata and the sequence counters."""
        objects = []
        with self._resize.shared(), self._env.begin(db=self._objects) as txn:
            for _, value in txn.cursor():
                objects.append(pb.ObjectMeta.FromString(value))
        objects.sort(key=lambda meta: meta.sequence)
        last = max(self._read_counter(_LAST_SEQUENCE), self._read_counter(_RESERVED_SEQUENCE))
        return Recovered(objects=objects, last_sequence=last, trimmed_through=self.trimmed_through)

    # -- writing ------------------------------------------------------------------

    def write(self, changes: Sequence[Change]) -> None:
        """Apply changes in one transaction and fsync it; grow the map when it is full.

        An object that a later change of the same batch removes (a frame put,
        read and deleted between two commits) is not written at all: the
        transaction ends in the same state without its payload crossing the disk.
        """
        outlived = _outlived(changes)
        needed = sum(
            change.payload_bytes
            for position, change in enumerate(changes)
            if position not in outlived
        )
        self._grow_if_short(needed)
        while True:
            try:
                with self._resize.shared():
                    self._write_once(changes, outlived)
                return
            except lmdb.MapFullError:
                self._grow(self._env.info()["map_size"] + needed)
            except lmdb.Error as exc:
                if _is_disk_full(exc):
                    raise exhausted(f"disk full under {self.path}: {exc}") from exc
                raise

    def _write_once(self, changes: Sequence[Change], outlived: set[int]) -> None:
        with self._env.begin(write=True) as txn:
            for position, change in enumerate(changes):
                if change.stored is not None and position not in outlived:
                    meta, payload = change.stored
                    txn.put(meta.id, payload, db=self._payloads)
                    txn.put(meta.id, meta.SerializeToString(), db=self._objects)
                for object_id in change.removed:
                    txn.delete(object_id, db=self._payloads)
                    txn.delete(object_id, db=self._objects)
                event = change.event
                txn.put(_U64.pack(event.sequence), event.SerializeToString(), db=self._events)
            txn.put(_LAST_SEQUENCE, _U64.pack(changes[-1].event.sequence), db=self._state)
            self._trim_events(txn)

    def _trim_events(self, txn: lmdb.Transaction) -> None:
        excess = txn.stat(self._events)["entries"] - self._event_retention
        if excess <= 0:
            return
        cursor = txn.cursor(db=self._events)
        cursor.first()
        trimmed = self.trimmed_through
        for _ in range(excess):
            trimmed = _U64.unpack(cursor.key())[0]
            cursor.delete()
        txn.put(_TRIMMED_THROUGH, _U64.pack(trimmed), db=self._state)
        self.trimmed_through = trimmed

    def reserve_sequences(self, through: int) -> None:
        """Persist that sequence numbers up to ``through`` may be handed out.

        After a crash the counter resumes past the reservation, so a number a
        subscriber may already have seen is never given to a different change.
        """
        with self._resize.shared(), self._env.begin(write=True, db=self._state) as txn:
            txn.put(_RESERVED_SEQUENCE, _U64.pack(through))

    def _grow_if_short(self, needed: int) -> None:
        info = self._env.info()
        used = (info["last_pgno"] + 1) * self._env.stat()["psize"]
        if used + 2 * needed + 64 * _PAGE_OVERHEAD > info["map_size"]:
            self._grow(used + 2 * needed)

    def _grow(self, at_least: int) -> None:
        with self._resize.exclusive():
            current = self._env.info()["map_size"]
            new_size = max(2 * current, at_least + (64 << 20))
            self._env.set_mapsize(new_size)
            log.info("LMDB map grown from %d to %d bytes", current, new_size)

    # -- reading ------------------------------------------------------------------

    def read_payload_into(self, meta: pb.ObjectMeta, target: memoryview) -> bool:
        """Copy an object's payload into ``target`` and check its CRC32C; False when gone.

        A payload that no longer matches its checksum is DATA_LOSS, never data.
        """
        with self._resize.shared(), self._env.begin(db=self._payloads, buffers=True) as txn:
            buffer = txn.get(meta.id)
            if buffer is None:
                return False
            if len(buffer) != meta.size:
                raise _corrupted(meta)
            target[:] = buffer
        if crc32c.crc32c(target) != meta.crc32c:
            raise _corrupted(meta)
        return True

    def read_events(self, first: int, last: int, batch: int = 512) -> Iterator[pb.Event]:
        """Stored events with sequence in [first, last], in order, read in short transactions.

        Raises OUT_OF_RANGE if retention trimming has removed any of them.
        """
        position = first
        while position <= last:
            events = []
            with self._resize.shared(), self._env.begin(db=self._events) as txn:
                trimmed = _read_u64(txn.get(_TRIMMED_THROUGH, db=self._state))
                if position <= trimmed:
                    raise history_gone(position, trimmed + 1)
                cursor = txn.cursor()
                if cursor.set_range(_U64.pack(position)):
                    for key, value in cursor:
                        sequence = _U64.unpack(key)[0]
                        if sequence > last or len(events) == batch:
                            break
                        events.append(pb.Event.FromString(value))
            if not events:
                return
            yield from events
            position = events[-1].sequence + 1

    def _read_counter(self, key: bytes) -> int:
        with self._resize.shared(), self._env.begin(db=self._state) as txn:
            return _read_u64(txn.get(key))

    def close(self, last_sequence: int | None = None) -> None:
        """Release the reservation (a clean stop needs no gap) and close the environment."""
        if last_sequence is not None:
            self.reserve_sequences(last_sequence)
        self._env.sync(True)
        self._env.close()
        self._lock_file.close()


def _corrupted(meta: pb.ObjectMeta) -> StoreError:
    return StoreError(
        grpc.StatusCode.DATA_LOSS,
        f"object {meta.id.hex()} ({meta.name or 'unnamed'}) is corrupted on disk:"
        " its checksum does not match",
    )


def _read_u64(value: bytes | None) -> int:
    return _U64.unpack(value)[0] if value else 0


def _is_disk_full(exc: lmdb.Error) -> bool:
    return (
        isinstance(exc, lmdb.DiskError) or f"{errno.ENOSPC}" in str(exc) or "No space" in str(exc)
    )


def _lock_directory(path: str) -> TextIO:
    """Hold an exclusive lock on the data directory so two servers never share it."""
    handle = open(os.path.join(path, "LOCK"), "a+")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(
            f"another improv-store server is using the data directory {path}"
        ) from None
    return handle
