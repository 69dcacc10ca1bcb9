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
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO, TypeVar

import crc32c
import lmdb
from google.protobuf.message import DecodeError

from improv_store.protocol import Code
from improv_store.v1 import store_pb2 as pb

from .backend import Change, removed_later
from .errors import StoreError, exhausted, history_gone

log = logging.getLogger(__name__)

_U64 = struct.Struct(">Q")
_LAST_SEQUENCE = b"last_sequence"
_RESERVED_SEQUENCE = b"reserved_sequence"
_TRIMMED_THROUGH = b"trimmed_through"
_APPLIED_LOG = b"applied_log_generation"  # the write-ahead log's, see wal.py
_STORE_ID = b"store_id"  # made with the data, see InfoResponse.store_id
_PROMOTED_FROM = b"promoted_from"  # "STORE_ID SEQUENCE", see Replication.promoted_from
_PAGE_OVERHEAD = 4096
# An EIO from a write means a full disk when less than the write's payloads plus
# this is free: LMDB reports a short write (what a full disk causes) as EIO.
_DISK_FULL_MARGIN = 1 << 20
# How often a reader adopts a map a running server keeps growing before giving up.
_RESIZE_ATTEMPTS = 100

T = TypeVar("T")


@dataclass
class Recovered:
    """What a restart finds on disk."""

    records: list[bytes]  # every object's serialized ObjectMeta, in no particular order
    last_sequence: int  # past every number handed out, reservations included
    committed_sequence: int  # the last change on disk: where a follower resumes
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
    """The on-disk half of the store, and the committers' Backend (backend.py).

    Thread-safe; one committer's thread calls ``write``.
    """

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
        self.applied_log_generation = self._read_counter(_APPLIED_LOG)
        self.store_id = self._store_id()
        self.promoted_from = self._promoted_from()

    # -- recovery -----------------------------------------------------------------

    def recover(self) -> Recovered:
        """Read back every object's metadata and the sequence counters."""
        with self._resize.shared(), self._env.begin(db=self._objects) as txn:
            records = list(txn.cursor().iternext(keys=False, values=True))
        committed = self._read_counter(_LAST_SEQUENCE)
        last = max(committed, self._read_counter(_RESERVED_SEQUENCE))
        return Recovered(records=records, last_sequence=last, committed_sequence=committed,
                         trimmed_through=self.trimmed_through)

    # -- writing ------------------------------------------------------------------

    def write(self, changes: Sequence[Change], *, applied_log: int | None = None) -> None:
        """Apply changes in one transaction and fsync it (Backend.write); grow the map
        instead of failing when it is full.

        A full disk (ENOSPC, or the EIO of a short write) is RESOURCE_EXHAUSTED;
        the transaction is then undone whole.
        """
        needed = sum(change.payload_bytes for change in changes)
        self._growing(needed, lambda: self._write_once(changes, applied_log))
        if applied_log is not None:
            self.applied_log_generation = applied_log

    def _growing(self, needed: int, write: Callable[[], None]) -> None:
        """Run ``write`` (one write transaction of about ``needed`` bytes), growing the map
        while it is full; a full disk is RESOURCE_EXHAUSTED."""
        self._grow_if_short(needed)
        while True:
            try:
                with self._resize.shared():
                    write()
                return
            except lmdb.MapFullError:
                self._grow(self._env.info()["map_size"] + needed)
            except lmdb.Error as exc:
                self._raise_if_disk_full(exc, needed)
                raise

    def _raise_if_disk_full(self, exc: lmdb.Error, needed: int) -> None:
        """RESOURCE_EXHAUSTED if ``exc`` came from the disk being full."""
        if _is_disk_full(exc, self.path, needed):
            raise disk_full(self.path, exc) from exc

    def _write_once(self, changes: Sequence[Change], applied_log: int | None) -> None:
        skipped = removed_later(changes)
        with self._env.begin(write=True) as txn:
            for index, change in enumerate(changes):
                if change.stored is not None and index not in skipped:
                    meta, payload = change.stored
                    txn.put(meta.id, payload, db=self._payloads)
                    txn.put(meta.id, meta.SerializeToString(), db=self._objects)
                for object_id in change.removed:
                    txn.delete(object_id, db=self._payloads)
                    txn.delete(object_id, db=self._objects)
                event = change.event
                txn.put(_U64.pack(event.sequence), event.SerializeToString(), db=self._events)
            txn.put(_LAST_SEQUENCE, _U64.pack(changes[-1].event.sequence), db=self._state)
            if applied_log is not None:
                txn.put(_APPLIED_LOG, _U64.pack(applied_log), db=self._state)
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

    def write_objects(
        self, stored: Sequence[tuple[pb.ObjectMeta, bytes | memoryview]], removed: Sequence[bytes]
    ) -> None:
        """Store and remove objects in one durable transaction without any event: a
        follower's copy of its primary's snapshot (see ``restart_history``)."""
        def write() -> None:
            with self._env.begin(write=True) as txn:
                for object_id in removed:
                    txn.delete(object_id, db=self._payloads)
                    txn.delete(object_id, db=self._objects)
                for meta, payload in stored:
                    txn.put(meta.id, payload, db=self._payloads)
                    txn.put(meta.id, meta.SerializeToString(), db=self._objects)

        self._growing(sum(len(payload) for _, payload in stored), write)

    def restart_history(self, sequence: int, store_id: str) -> None:
        """Make the data a snapshot of store ``store_id`` at ``sequence``: no event
        retained, the sequence and the identity that store's."""
        packed = _U64.pack(sequence)
        with self._resize.shared(), self._env.begin(write=True) as txn:
            txn.drop(self._events, delete=False)
            for key in (_LAST_SEQUENCE, _RESERVED_SEQUENCE, _TRIMMED_THROUGH):
                txn.put(key, packed, db=self._state)
            txn.put(_STORE_ID, store_id.encode(), db=self._state)
            txn.delete(_PROMOTED_FROM, db=self._state)
        self.trimmed_through = sequence
        self.store_id = store_id
        self.promoted_from = None

    def adopt_store_id(self, store_id: str, promoted_from: tuple[str, int] | None = None) -> None:
        """Take another identity: a follower's primary's, or a new one at a promotion
        (``promoted_from``: the identity and last sequence it had as a follower)."""
        with self._resize.shared(), self._env.begin(write=True, db=self._state) as txn:
            txn.put(_STORE_ID, store_id.encode())
            if promoted_from is None:
                txn.delete(_PROMOTED_FROM)
            else:
                txn.put(_PROMOTED_FROM, f"{promoted_from[0]} {promoted_from[1]}".encode())
        self.store_id = store_id
        self.promoted_from = promoted_from

    def reserve_sequences(self, through: int) -> None:
        """Persist that sequence numbers up to ``through`` may be handed out.

        After a crash the counter resumes past the reservation, so a number a
        subscriber may already have seen is never given to a different change.
        """
        try:
            with self._resize.shared(), self._env.begin(write=True, db=self._state) as txn:
                txn.put(_RESERVED_SEQUENCE, _U64.pack(through))
        except lmdb.Error as exc:
            self._raise_if_disk_full(exc, 0)
            raise

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
            if len(buffer) != len(target):
                raise corrupted(meta, payload_problem(meta, buffer) or "size differs")
            target[:] = buffer
        problem = payload_problem(meta, target)
        if problem is not None:
            raise corrupted(meta, problem)
        return True

    def read_events(self, first: int, last: int, batch: int = 512) -> Iterator[pb.Event]:
        """Stored events with sequence in [first, last], in order, read in short transactions.

        Raises OUT_OF_RANGE if retention trimming has removed any of them.
        """
        position = first
        while position <= last:
            events: list[pb.Event] = []
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

    def _promoted_from(self) -> tuple[str, int] | None:
        with self._env.begin(db=self._state) as txn:
            stored = txn.get(_PROMOTED_FROM)
        if stored is None:
            return None
        store_id, sequence = bytes(stored).decode().split()
        return store_id, int(sequence)

    def _store_id(self) -> str:
        """The data's identity, made the first time the environment is opened."""
        with self._env.begin(write=True, db=self._state) as txn:
            stored = txn.get(_STORE_ID)
            if stored is None:
                stored = uuid.uuid4().hex.encode()
                txn.put(_STORE_ID, stored)
        return bytes(stored).decode()

    def _read_counter(self, key: bytes) -> int:
        with self._resize.shared(), self._env.begin(db=self._state) as txn:
            return _read_u64(txn.get(key))

    def close(self, last_sequence: int | None = None) -> None:
        """Release the reservation (a clean stop needs no gap) and close the environment."""
        if last_sequence is not None:
            try:
                self.reserve_sequences(last_sequence)
            except StoreError as exc:  # only leaves a gap in the sequence
                log.warning("could not release the sequence reservation: %s", exc.message)
        self._env.sync(True)
        self._env.close()
        self._lock_file.close()


@dataclass(frozen=True)
class Checked:
    """The outcome of checking one stored object (``problem`` None when it is sound)."""

    object_id: bytes
    name: str
    size: int
    problem: str | None


class DataDirectoryReader:
    """Read-only access to a data directory, to check every payload against its metadata.

    Safe beside a server running on the same directory: LMDB readers neither
    block nor disturb its writer. Objects are read in short transactions, so
    a long check does not keep the server from reusing freed pages (it sees
    each object as of the moment it is read).
    """

    def __init__(self, path: str) -> None:
        if not os.path.isfile(os.path.join(path, "data.mdb")):
            raise FileNotFoundError(f"no improv-store data (data.mdb) in {path}")
        self._env = lmdb.open(
            path, readonly=True, create=False, max_dbs=4, readahead=False, max_readers=512
        )
        try:
            self._payloads = self._adopting_map_size(
                lambda: self._env.open_db(b"payloads", create=False)
            )
            self._objects = self._adopting_map_size(
                lambda: self._env.open_db(b"objects", create=False)
            )
            self._state = self._adopting_map_size(
                lambda: self._env.open_db(b"state", create=False)
            )
        except lmdb.Error:
            self._env.close()
            raise

    def __enter__(self) -> DataDirectoryReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._env.close()

    def applied_log_generation(self) -> int:
        """The last generation of the write-ahead log that LMDB holds (see wal.py)."""
        with self._reading() as txn:
            return _read_u64(txn.get(_APPLIED_LOG, db=self._state))

    def check_objects(self, batch: int = 64) -> Iterator[Checked]:
        """Every object's payload checked against its size and CRC32C, in ID order."""
        yield from self._scan(self._objects, self._check_object, batch)

    def orphan_payloads(self, batch: int = 1024) -> Iterator[Checked]:
        """Payloads stored without metadata (the two are only ever written together)."""
        for checked in self._scan(self._payloads, self._check_orphan, batch):
            if checked.problem is not None:
                yield checked

    def _check_object(
        self, txn: lmdb.Transaction, object_id: bytes, value: bytes | memoryview
    ) -> Checked:
        try:
            meta = pb.ObjectMeta.FromString(bytes(value))
        except DecodeError as exc:
            return Checked(object_id, "", 0, f"its metadata cannot be read: {exc}")
        payload = txn.get(object_id, db=self._payloads)
        problem = "its payload is missing" if payload is None else payload_problem(meta, payload)
        return Checked(object_id, meta.name, meta.size, problem)

    def _check_orphan(
        self, txn: lmdb.Transaction, object_id: bytes, value: bytes | memoryview
    ) -> Checked:
        if txn.get(object_id, db=self._objects) is not None:
            return Checked(object_id, "", len(value), None)
        return Checked(object_id, "", len(value), "a payload without metadata")

    def _scan(
        self,
        db: lmdb._Database,
        check: Callable[[lmdb.Transaction, bytes, bytes | memoryview], Checked],
        batch: int,
    ) -> Iterator[Checked]:
        """``check`` applied to every entry of ``db``, ``batch`` entries per transaction."""
        after: bytes | None = None
        while True:
            results: list[Checked] = []
            with self._reading() as txn:
                cursor = txn.cursor(db=db)
                found = cursor.set_range(after) if after is not None else cursor.first()
                if found and after is not None and bytes(cursor.key()) == after:
                    found = cursor.next()
                while found and len(results) < batch:
                    key = bytes(cursor.key())
                    results.append(check(txn, key, cursor.value()))
                    after = key
                    found = cursor.next()
            yield from results
            if not found:
                return

    @contextlib.contextmanager
    def _reading(self) -> Iterator[lmdb.Transaction]:
        """A read transaction on the database as it is now."""
        with self._adopting_map_size(lambda: self._env.begin(buffers=True)) as txn:
            yield txn

    def _adopting_map_size(self, begin: Callable[[], T]) -> T:
        """``begin()``, which starts a transaction, retried after adopting the map size
        when a running server has grown the database past this reader's map."""
        for _ in range(_RESIZE_ATTEMPTS):
            try:
                return begin()
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)
        return begin()


def payload_problem(meta: pb.ObjectMeta, payload: bytes | memoryview) -> str | None:
    """Why a payload read back does not match its metadata (size, CRC32C), or None."""
    if len(payload) != meta.size:
        return f"the payload is {len(payload)} bytes, its metadata says {meta.size}"
    checksum = crc32c.crc32c(payload)
    if checksum != meta.crc32c:
        return f"its CRC32C is {checksum:#010x}, its metadata says {meta.crc32c:#010x}"
    return None


def disk_full(path: str, cause: Exception) -> StoreError:
    """RESOURCE_EXHAUSTED for a write the disk under ``path`` had no room for."""
    return exhausted(f"disk full under {path} ({cause}); free space or delete objects")


def corrupted(meta: pb.ObjectMeta, problem: str) -> StoreError:
    """DATA_LOSS naming the object (ID and name) whose stored payload is damaged."""
    return StoreError(
        Code.DATA_LOSS,
        f"object {meta.id.hex()} ({meta.name or 'unnamed'}) is corrupted on disk: {problem}",
    )


def _read_u64(value: bytes | memoryview | None) -> int:
    return _U64.unpack(value)[0] if value else 0


def _is_disk_full(exc: lmdb.Error, path: str, needed: int) -> bool:
    """Whether a failed write failed for lack of space under ``path``.

    ENOSPC says so; LMDB turns a short write (what a full disk gives) into EIO,
    so an EIO while less than the write needs is free counts too.
    """
    message = str(exc)
    if isinstance(exc, lmdb.DiskError) or os.strerror(errno.ENOSPC) in message:
        return True
    if os.strerror(errno.EIO) not in message:
        return False
    try:
        stats = os.statvfs(path)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < needed + _DISK_FULL_MARGIN


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
