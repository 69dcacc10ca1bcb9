"""The store core: objects, names, memory, sequence, durability and events.

Every change happens under one lock, gets the next sequence number, updates
the table, joins the event log, reaches subscribers and is queued for disk,
in that order, so all of them agree on one history. Copying payloads,
checksumming them, reading them back from disk and waiting for fsync (in
``sync`` mode) happen outside the lock.

Payloads live in the shared-memory arena. Inline writes are copied in,
streamed writes land chunk by chunk, and colocated writers fill a created
region themselves; readers either copy out (inline) or take a lease on the
region (shared memory). Independent of transport: the handlers both
transports call are a thin layer over it.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import os
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import crc32c
from google.protobuf.timestamp_pb2 import Timestamp

from improv_store import __version__
from improv_store.protocol import ID_LENGTH, MAX_IDS_PER_MESSAGE, Code
from improv_store.v1 import store_pb2 as pb

from . import validation, wal
from .arena import Arena, Region
from .backend import Change
from .commit_async import AsyncCommitter
from .commit_sync import SyncCommitter
from .committer import CommitHooks, Committer, Ticket
from .config import ServerConfig
from .errors import (
    StoreError,
    exhausted,
    invalid,
    not_found,
    read_only,
    resume_impossible,
    unavailable,
)
from .eventlog import EventLog
from .index import ObjectIndex
from .index import supported as index_supported
from .lmdb_backend import LmdbBackend
from .locality import ShmNamespace, arena_capacity
from .objects import ObjectTable, StoredObject
from .pins import PinTables
from .residency import ResidentSet
from .sessions import Sessions
from .subscriptions import Subscriber, SubscriberHub

log = logging.getLogger(__name__)

SEQUENCE_RESERVATION = 10_000
_COMMIT_FOR_ROOM_ATTEMPTS = 5
MAX_PAGE_SIZE = 1000
# DeleteMatching deletes at most this many objects per hold of the store's lock.
_DELETE_CHUNK = 1000
DEFAULT_PAGE_SIZE = 100
_PAGE_TOKEN = re.compile(r"[1-9][0-9]*")

_DURABILITY = {
    "sync": pb.DURABILITY_SYNC,
    "async": pb.DURABILITY_ASYNC,
    "none": pb.DURABILITY_NONE,
}


@dataclass(frozen=True)
class Stored:
    """The outcome of a put: the new object's metadata, what it replaced, its lease if kept.

    ``ticket`` is the commit that makes it durable (None without a disk).
    """

    meta: pb.ObjectMeta
    replaced_ids: list[bytes]
    handle: pb.ShmHandle | None = None
    ticket: Ticket | None = None


class Store:
    """Thread-safe object store."""

    def __init__(
        self, config: ServerConfig, observe_commit: Callable[[int, float], None] | None = None
    ) -> None:
        """``observe_commit(changes, seconds)`` is told about every group commit that makes
        changes durable (CommitHooks.observe)."""
        self.config = config
        self.start_time = time.time()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closing = False
        self._table = ObjectTable()
        self._hub = SubscriberHub()
        self._sessions = Sessions()
        self._uncommitted: deque[StoredObject] = deque()
        self._backend: LmdbBackend | None = None
        self._committer: Committer | None = None
        self._wal: wal.WriteAheadLog | None = None
        self._last_sequence = 0
        self._reserved_through = 0
        # Object IDs: 160 random bits from a generator seeded by the OS, because a
        # getrandom() call per put costs more than the rest of a small put.
        self._new_ids = random.Random(os.urandom(32))
        self._disk_full: str | None = None  # why the last commit failed, while the disk is full
        # The address of the store this one follows (docs/replication.md); "" for a primary.
        self.primary = config.follow
        # The newest sequence a follower knows its primary issued (None: not reached yet):
        # resumes up to it wait for it.
        self._primary_horizon: int | None = None
        self._resyncing = False
        self._observe_commit = observe_commit
        capacity = arena_capacity(config.memory)
        self.shm = ShmNamespace(config.data_dir)
        try:
            trimmed_through = self._recover() if config.durability != "none" else 0
        except BaseException:
            self.shm.close()
            raise
        # A store without data on disk starts over at every start: a new identity each time.
        self.store_id = self._backend.store_id if self._backend else uuid.uuid4().hex
        # For a store promoted from a follower: the identity and last sequence it had then.
        self.promoted_from: tuple[str, int] | None = (
            self._backend.promoted_from if self._backend else None
        )
        instance = os.urandom(3).hex()
        segment_prefix = f"{self.shm.prefix}{instance}-"
        index = pins = None
        if config.index_slots and index_supported():
            index = ObjectIndex(f"{segment_prefix}index", config.index_slots,
                                config.shm_min_size, segment_prefix, views=True)
            pins = PinTables(segment_prefix)
        self._resident = ResidentSet(Arena(segment_prefix, capacity),
                                     evictable=self._backend is not None, index=index, pins=pins)
        self._events = EventLog(self._backend, config.event_retention, trimmed_through)
        self._events.committed(self._last_sequence)
        if self._backend is not None:
            self._committer = self._start_committer(observe_commit)

    def _start_committer(self, observe: Callable[[int, float], None] | None) -> Committer:
        """The committer of the durability mode, writing to LMDB (and the log, if any)."""
        assert self._backend is not None
        hooks = CommitHooks(on_commit=self._committed, on_failure=self._commit_failed,
                            observe=observe)
        if self.config.durability == "sync":
            return SyncCommitter(self._backend, wal=self._wal,
                                 apply_interval=self.config.log_apply_interval, hooks=hooks,
                                 durable_sequence=self._last_sequence)
        return AsyncCommitter(self._backend, interval=self.config.commit_interval, hooks=hooks,
                              durable_sequence=self._last_sequence)

    def _recover(self) -> int:
        """Open LMDB and rebuild the table from it; return how far history was trimmed.

        Payloads stay on disk until first read.
        """
        config = self.config
        self._backend = LmdbBackend(
            config.data_dir,
            initial_map_size=config.initial_map_size,
            event_retention=config.event_retention,
        )
        self._wal = self._replay_log()
        recovered = self._backend.recover()
        self._table.load(map(StoredObject.parse, recovered.records))
        # A follower's sequence is its primary's: it resumes right after what it committed.
        self._last_sequence = self._reserved_through = (
            recovered.committed_sequence if config.follow else recovered.last_sequence
        )
        log.info(
            "recovered %d objects (%d bytes) from %s; last sequence %d",
            len(self._table), self._table.total_bytes, config.data_dir, self._last_sequence,
        )
        return recovered.trimmed_through

    def _replay_log(self) -> wal.WriteAheadLog | None:
        """Apply to LMDB what the write-ahead log holds beyond it (a crash in ``sync``
        mode); return the log, open for appending, in ``sync`` mode."""
        assert self._backend is not None
        path = os.path.join(self.config.data_dir, wal.WAL_FILE)
        applied = self._backend.applied_log_generation
        for generation, logged in wal.read_after(path, applied):
            self._backend.write(logged, applied_log=generation)
            applied = generation
            log.info("applied %d changes from the write-ahead log", len(logged))
        # A follower commits to LMDB directly: a resync rewrites the data under the log.
        if self.config.durability != "sync" or not self.config.wal_size or self.config.follow:
            return None
        try:
            return wal.WriteAheadLog(path, self.config.wal_size, applied + 1)
        except OSError as exc:
            log.warning("no write-ahead log (%s): each sync commit goes to LMDB", exc)
            return None

    # -- writes ---------------------------------------------------------------------

    def check_new(self, spec: pb.ObjectSpec, size: int, *, replace: bool = False) -> None:
        """Check a new object's declaration before its payload is taken.

        While the disk is full (the last commit failed for lack of space) new
        objects are refused at once: they could not be committed either.
        """
        validation.check_spec(spec, size, self.config.max_object_size, self.config.max_name_length)
        if replace and not spec.name:
            raise invalid("replace needs a name")
        with self._lock:
            self.check_writable()
            if self._disk_full is not None:
                raise exhausted(f"{self._disk_full}; new objects are refused until it has room")
            if spec.id and spec.id in self._table:
                raise _exists(spec.id)

    def reserve(self, spec: pb.ObjectSpec, size: int, *, replace: bool = False) -> Region:
        """Check a new object and allocate the region its payload will be written into."""
        self.check_new(spec, size, replace=replace)
        return self._allocate(size)

    def _allocate(self, length: int) -> Region:
        """A region of ``length`` bytes, committing pending writes if that frees room.

        Only committed objects can be evicted, so when memory is full of
        writes the background committer has not reached yet, commit them now
        instead of failing.
        """
        for _ in range(_COMMIT_FOR_ROOM_ATTEMPTS):
            with self._lock:
                self._check_open()
                try:
                    return self._resident.allocate(length)
                except StoreError:
                    if not self._uncommitted or self._committer is None:
                        raise
                    ticket = self._committer.commit_now()
            ticket.wait()
        with self._lock:
            return self._resident.allocate(length)

    def discard(self, region: Region) -> None:
        """Free a reserved region that will not become an object."""
        with self._lock:
            self._resident.free(region)

    def put(
        self,
        spec: pb.ObjectSpec,
        payload: bytes | memoryview,
        *,
        replace: bool = False,
        wait: bool = True,
    ) -> Stored:
        """Store one object from bytes; with ``replace``, drop the older ones of its name.

        ``wait=False`` returns before a ``sync`` commit; pass the result's
        ticket to ``await_durable`` to wait for it.
        """
        region = self.reserve(spec, len(payload), replace=replace)
        try:
            region.view()[:] = payload
            checksum = crc32c.crc32c(payload)
        except BaseException:
            self.discard(region)
            raise
        return self.insert(spec, region, checksum, replace=replace, wait=wait)

    @contextlib.contextmanager
    def logging_in_this_thread(self) -> Iterator[bool]:
        """Let the calling thread append the changes it makes to the write-ahead log itself
        (SyncCommitter.logging_in_this_thread); yields False if there is no log."""
        if self._committer is None:
            yield False
            return
        with self._committer.logging_in_this_thread() as logs:
            yield logs

    def log_pending(self) -> None:
        """For a thread that logs its own changes: make what it submitted durable now."""
        if self._committer is not None:
            self._committer.log_pending()

    def await_durable(self, ticket: Ticket | None) -> None:
        """In ``sync`` mode, wait until the commit of ``ticket`` is on disk; raise if it failed."""
        if ticket is not None and self.config.durability == "sync":
            ticket.wait()

    def insert(
        self,
        spec: pb.ObjectSpec,
        region: Region,
        checksum: int,
        *,
        replace: bool = False,
        lease_to: str | None = None,
        wait: bool = True,
    ) -> Stored:
        """Make a filled region an object; the region is the store's from here on.

        If the object is refused, the region is freed. ``lease_to`` names a
        session that gets a lease on the new object in the same step, before
        anyone could delete it; if its commit fails, the lease is released.
        ``wait`` as for ``put``.
        """
        try:
            stored = self._insert(spec, region, checksum, replace, lease_to)
        except BaseException:
            self.discard(region)
            raise
        if stored.handle is not None and stored.ticket is not None and lease_to is not None:
            lease_id = stored.handle.lease_id

            def release_if_failed(error: StoreError | None) -> None:
                if error is not None:
                    with contextlib.suppress(StoreError):  # the session may have ended
                        self.release(lease_to, [lease_id])

            stored.ticket.when_done(release_if_failed)
        if wait:
            self.await_durable(stored.ticket)
        return stored

    def _insert(
        self,
        spec: pb.ObjectSpec,
        region: Region,
        checksum: int,
        replace: bool,
        lease_to: str | None,
    ) -> Stored:
        if spec.HasField("crc32c") and spec.crc32c != checksum:
            raise StoreError(
                Code.DATA_LOSS,
                f"payload CRC32C is {checksum:#010x}, the request says {spec.crc32c:#010x}",
            )
        meta = pb.ObjectMeta(
            id=spec.id or self._new_ids.randbytes(ID_LENGTH),
            name=spec.name,
            size=region.length,
            encoding=spec.encoding or pb.ENCODING_RAW,
            crc32c=checksum,
        )
        if spec.labels:  # copying an empty map still costs a Python-level update()
            meta.labels.update(spec.labels)
        if spec.HasField("array"):
            meta.array.CopyFrom(spec.array)
        _set_now(meta.create_time)
        with self._lock:
            self._check_open()
            if meta.id in self._table:
                raise _exists(meta.id)
            session = self._sessions.get(lease_to) if lease_to is not None else None
            replaced = self._table.ids_named(meta.name) if replace else []
            if len(replaced) > MAX_IDS_PER_MESSAGE:
                # The REPLACE lists the newest; the rest go first, each with its own DELETE
                # event, so no event or answer outgrows a client's receive limit.
                excess, replaced = replaced[:-MAX_IDS_PER_MESSAGE], replaced[-MAX_IDS_PER_MESSAGE:]
                self._reserve_sequences(len(excess))
                for object_id in excess:
                    self._delete_locked(object_id)
            meta.sequence = self._next_sequence()
            obj = StoredObject.of(meta, committing=self._backend is not None)
            self._table.add(obj, meta.name)
            self._resident.admit(obj, region, meta)
            handle = None
            if session is not None:
                self._resident.pin(obj)
                handle = self._sessions.lease(session, obj)
            if obj.committing:
                self._uncommitted.append(obj)
            dropped = [self._table.remove(object_id) for object_id in replaced]
            for older in dropped:
                self._drop(older)
            event = pb.Event(
                sequence=meta.sequence,
                type=pb.EVENT_TYPE_REPLACE if replace else pb.EVENT_TYPE_PUT,
                meta=meta,
                replaced_ids=replaced,
                time=meta.create_time,
            )
            stored = (meta, region.view())
            ticket = self._record(Change(event=event, stored=stored, removed=replaced), dropped)
            self._changed.notify_all()
        return Stored(meta=meta, replaced_ids=replaced, handle=handle, ticket=ticket)

    def delete(self, ref: pb.ObjectRef, *, wait: bool = True) -> tuple[list[bytes], Ticket | None]:
        """Delete one object by ID, or every object with a name; return the deleted IDs, and
        the ticket of the commit that makes it durable (see ``put`` for ``wait``)."""
        validation.check_ref(ref, self.config.max_name_length)
        ticket = None
        with self._lock:
            self._check_open()
            self.check_writable()
            if ref.WhichOneof("ref") == "id":
                ids = [ref.id] if ref.id in self._table else []
            else:
                ids = self._table.ids_named(ref.name)
            if not ids:
                raise not_found(f"no object {_describe(ref)}")
            self._reserve_sequences(len(ids))
            for object_id in ids:
                ticket = self._delete_locked(object_id)
        if wait:
            self.await_durable(ticket)
        return ids, ticket

    def delete_matching(
        self,
        prefix: str,
        before_sequence: int,
        created_before_ns: int | None,
        *,
        everything: bool = False,
        wait: bool = True,
    ) -> tuple[int, int, Ticket | None]:
        """Delete every object whose name starts with ``prefix``, stored before sequence
        ``before_sequence`` (0: any) and created before ``created_before_ns`` (None: any).

        Returns how many were deleted, the last DELETE event's sequence and the
        ticket of the commit that makes it durable (see ``put`` for ``wait``).
        Works through the matches a chunk per hold of the lock, so other calls
        go on meanwhile; objects stored after the call began are never touched.
        """
        validation.check_prefix(prefix, self.config.max_name_length)
        if not (prefix or before_sequence or created_before_ns is not None or everything):
            raise invalid("say what to delete (prefix, before_sequence, created_before), or all")
        with self._lock:
            self.check_writable()
            bound = self._last_sequence + 1
        if before_sequence:
            bound = min(bound, before_sequence)
        deleted = last = 0
        ticket = None
        after = 0
        while True:
            with self._lock:
                self._check_open()
                chosen, after, finished = self._table.select(
                    prefix, after, bound, created_before_ns, _DELETE_CHUNK
                )
                if chosen:
                    self._reserve_sequences(len(chosen))
                    for obj in chosen:
                        ticket = self._delete_locked(obj.object_id)
                    deleted += len(chosen)
                    last = self._last_sequence
            if finished:
                break
        if wait:
            self.await_durable(ticket)
        return deleted, last, ticket

    def sequence_freeing_to(self, limit: int, target: int) -> int:
        """When the stored payloads take more than ``limit`` bytes: the sequence before
        which deleting every object leaves at most ``target`` bytes; else 0."""
        with self._lock:
            total = self._table.total_bytes
            if total <= limit:
                return 0
            return self._table.sequence_freeing(total - target)

    def _delete_locked(self, object_id: bytes) -> Ticket | None:
        """Remove a stored object and record its DELETE event (sequences reserved)."""
        removed = self._table.remove(object_id)
        self._drop(removed)
        event = pb.Event(
            sequence=self._next_sequence(), type=pb.EVENT_TYPE_DELETE, meta=removed.meta
        )
        _set_now(event.time)
        return self._record(Change(event=event, removed=(object_id,)), (removed,))

    def _drop(self, obj: StoredObject) -> None:
        obj.deleted = True
        self._resident.forget(obj)

    def _reserve_sequences(self, count: int) -> None:
        """Make sure the next ``count`` sequence numbers are reserved on disk.

        Done before a change touches anything, so a reservation that fails
        (a full disk) refuses the change cleanly.
        """
        through = self._last_sequence + count
        if self._backend is not None and through > self._reserved_through:
            self._backend.reserve_sequences(through + SEQUENCE_RESERVATION)
            self._reserved_through = through + SEQUENCE_RESERVATION

    def _next_sequence(self) -> int:
        self._reserve_sequences(1)
        self._last_sequence += 1
        return self._last_sequence

    def _record(self, change: Change, dropped: Sequence[StoredObject] = ()) -> Ticket | None:
        """Log, publish and queue a change; ``dropped`` are the objects it removes.

        A dropped object whose put waits in the same batch is freed at once:
        its payload will never be read, so a frame put and deleted between two
        commits hands its memory (pages warm) to the next frame.
        """
        self._events.append(change.event)
        self._hub.publish(change.event)
        if self._committer is None:
            return None
        ticket, unread = self._committer.submit(change)
        for obj in dropped:
            if obj.object_id in unread:
                obj.committing = False
                self._resident.release_if_unused(obj)
        return ticket

    def _committed(self, sequence: int) -> None:
        """The committer has everything through ``sequence`` on disk."""
        self._events.committed(sequence)
        with self._lock:
            if self._disk_full is not None:
                log.info("commits succeed again: new objects are accepted")
                self._disk_full = None
            while self._uncommitted and self._uncommitted[0].sequence <= sequence:
                obj = self._uncommitted.popleft()
                obj.committing = False
                self._resident.release_if_unused(obj)

    def _commit_failed(self, changes: list[Change], error: StoreError) -> None:
        """The committer could not write ``changes`` (it retries them); called before their
        writers hear of it.

        A full disk refuses new objects until a commit succeeds. In ``sync``
        mode the objects of the failed commit are withdrawn (deleted, so
        subscribers see them go), since their puts fail: nothing a client was
        told was refused stays stored, and their payloads are never written.
        Other failures are left to the retries.
        """
        if error.code != Code.RESOURCE_EXHAUSTED:
            return
        with self._lock:
            if self._disk_full is None:
                log.error("%s (new objects are refused until a commit succeeds)", error.message)
            self._disk_full = error.message
            if self.config.durability != "sync" or self.primary:
                return  # a follower keeps its primary's history: it retries instead
            withdrawn = [
                change.stored[0].id
                for change in changes
                if change.stored is not None and change.stored[0].id in self._table
            ]
            try:
                self._reserve_sequences(len(withdrawn))
            except StoreError as exc:
                log.error("cannot withdraw %d refused objects: %s", len(withdrawn), exc.message)
                return
            for object_id in withdrawn:
                self._delete_locked(object_id)
            self._changed.notify_all()

    # -- colocated writes -----------------------------------------------------------

    def create(
        self, session_id: str, spec: pb.ObjectSpec, size: int, *, replace: bool
    ) -> pb.ShmHandle:
        """Reserve a region for a session to fill; it becomes an object on seal."""
        self.check_session(session_id)
        region = self.reserve(spec, size, replace=replace)
        with self._lock:
            try:
                session = self._sessions.get(session_id)
            except StoreError:
                self._resident.free(region)
                raise
            return self._sessions.add_create(session, spec, region, replace).handle()

    def reserve_next(self, session_id: str, size: int) -> pb.ShmHandle | None:
        """A region for the session's next object, which it declares when it seals it
        (SealRequest.reserve_next); None when there is no room without committing
        first: the writer then calls Create."""
        if not 0 < size <= self.config.max_object_size:
            return None
        with self._lock:
            self.check_writable()
            session = self._sessions.get(session_id)
            try:
                region = self._resident.allocate(size)
            except StoreError:
                return None
            return self._sessions.add_create(session, None, region, False).handle()

    def seal(
        self,
        session_id: str,
        handle: pb.ShmHandle,
        *,
        keep_lease: bool = False,
        checksum: int | None = None,
        spec: pb.ObjectSpec | None = None,
        replace: bool = False,
        wait: bool = True,
    ) -> Stored:
        """Store a region the session filled, checked against the handle it was given.

        With ``keep_lease`` the session keeps reading rights on the region (a
        lease). ``checksum`` is the writer's CRC32C of the region, recorded as
        given (see SealRequest.crc32c); without it the region is read to compute it.
        ``spec`` and ``replace`` declare the object of a region from ``reserve_next``
        (and only of one: a Create declared its object already). ``wait`` as for
        ``put``.
        """
        with self._lock:
            pending = self._sessions.take_create(self._sessions.get(session_id), handle)
        try:
            if pending.spec is None:
                if spec is None:
                    raise invalid("a reserved region is sealed with the object's spec")
                self.check_new(spec, pending.region.length, replace=replace)
            elif spec is not None or replace:
                raise invalid(
                    "this region's object was declared by Create; seal it without spec or replace"
                )
            else:
                spec, replace = pending.spec, pending.replace
            if checksum is None:
                checksum = crc32c.crc32c(pending.region.view())
        except BaseException:
            self.discard(pending.region)
            raise
        return self.insert(
            spec, pending.region, checksum, replace=replace,
            lease_to=session_id if keep_lease else None, wait=wait,
        )

    def abort(self, session_id: str, handle: pb.ShmHandle) -> None:
        """Give up a created region."""
        with self._lock:
            pending = self._sessions.take_create(self._sessions.get(session_id), handle)
            self._resident.free(pending.region)

    # -- sessions and leases --------------------------------------------------------

    def open_session(self) -> tuple[pb.SessionResponse, threading.Event]:
        """A new session (its ID and pin table, for the client), and the event set when it
        ends or the store stops."""
        with self._lock:
            self._check_open()
            session = self._sessions.open()
            opened = pb.SessionResponse(session_id=session.session_id)
            if (pins := self._resident.pins) is not None:
                opened.pin_table = pins.open(session.session_id)
                opened.pin_slots = pins.slots
            return opened, session.ended

    def check_session(self, session_id: str) -> None:
        """FAILED_PRECONDITION unless ``session_id`` names an open session."""
        with self._lock:
            self._sessions.get(session_id)

    def close_session(self, session_id: str) -> None:
        """The session ended: drop its leases and free its unsealed regions."""
        with self._lock:
            objects, regions = self._sessions.close(session_id)
            for obj in objects:
                self._resident.unpin(obj)
            for region in regions:
                self._resident.free(region)
            if (pins := self._resident.pins) is not None:
                pins.close(session_id)
                self._resident.reclaim()
        if objects or regions:
            log.debug(
                "session %s ended holding %d leases and %d creates",
                session_id[:8],
                len(objects),
                len(regions),
            )

    def release(self, session_id: str, lease_ids: list[int]) -> int:
        """Drop a session's leases; return how many were released."""
        with self._lock:
            objects = self._sessions.release(self._sessions.get(session_id), lease_ids)
            for obj in objects:
                self._resident.unpin(obj)
        return len(objects)

    def lease(self, session_id: str, obj: StoredObject) -> pb.ShmHandle:
        """A handle on the object's payload, pinned for the session until released."""
        self._pin_resident(obj)
        with self._lock:
            try:
                return self._sessions.lease(self._sessions.get(session_id), obj)
            except StoreError:
                self._resident.unpin(obj)
                raise

    @contextlib.contextmanager
    def read(self, obj: StoredObject) -> Iterator[memoryview]:
        """The payload, pinned in memory while the caller copies it out."""
        region = self._pin_resident(obj)
        try:
            yield region.view()
        finally:
            with self._lock:
                self._resident.unpin(obj)

    def _pin_resident(self, obj: StoredObject) -> Region:
        """Pin the object with its payload in memory, loading it from disk if evicted;
        return where the payload is."""
        with self._lock:
            if obj.deleted:
                raise not_found(f"object {obj.object_id.hex()} was deleted")
            if (resident := obj.region) is not None:
                self._resident.pin(obj)
                self._resident.touch(obj)
                return resident
        region = self._allocate(obj.size)
        meta = obj.meta
        try:
            backend = self._backend
            if backend is None or not backend.read_payload_into(meta, region.view()):
                raise not_found(f"object {obj.object_id.hex()} was deleted")
        except BaseException:
            self.discard(region)
            raise
        with self._lock:
            if obj.region is None and not obj.deleted:
                self._resident.admit(obj, region, meta)
            else:
                self._resident.free(region)
                if obj.deleted:
                    raise not_found(f"object {obj.object_id.hex()} was deleted")
            self._resident.pin(obj)
            assert obj.region is not None  # resident and pinned: not evicted before unpinned
            return obj.region

    # -- reads ----------------------------------------------------------------------

    def get(self, ref: pb.ObjectRef, wait: float = 0.0) -> StoredObject:
        """Find an object, waiting up to ``wait`` seconds for it to appear.

        Waiting past ``wait`` is DEADLINE_EXCEEDED. Read the payload through
        ``read`` or ``lease``.
        """
        validation.check_ref(ref, self.config.max_name_length)
        deadline = time.monotonic() + wait
        with self._lock:
            while True:
                self._check_open()
                obj = self._lookup(ref)
                if obj is not None:
                    return obj
                remaining = deadline - time.monotonic()
                if wait <= 0:
                    raise not_found(f"no object {_describe(ref)}")
                if remaining <= 0:
                    raise StoreError(
                        Code.DEADLINE_EXCEEDED,
                        f"object {_describe(ref)} did not appear within {wait:g} s",
                    )
                self._changed.wait(min(remaining, threading.TIMEOUT_MAX))

    def get_many(
        self, refs: list[pb.ObjectRef], wait: float = 0.0
    ) -> list[StoredObject | StoreError]:
        """Look up several objects; each entry is the object or the error for it."""
        validation.check_batch(len(refs), "refs", self.config.max_batch_size)
        deadline = time.monotonic() + wait
        results: list[StoredObject | StoreError] = []
        for ref in refs:
            remaining = max(0.0, deadline - time.monotonic()) if wait else 0.0
            try:
                results.append(self.get(ref, remaining))
            except StoreError as exc:
                if exc.code == Code.UNAVAILABLE:
                    raise
                results.append(exc)
        return results

    def find(self, object_id: bytes) -> StoredObject | None:
        """The object with this ID if it is still stored."""
        with self._lock:
            return self._table.by_id(object_id)

    def _lookup(self, ref: pb.ObjectRef) -> StoredObject | None:
        if ref.WhichOneof("ref") == "id":
            return self._table.by_id(ref.id)
        return self._table.newest(ref.name)

    def list(self, prefix: str, page_size: int, page_token: str) -> pb.ListResponse:
        """One page of objects whose name starts with ``prefix``, in sequence order.

        The token is the last sequence returned, so a page resumes where the
        previous one ended whatever was put or deleted meanwhile.
        """
        validation.check_prefix(prefix, self.config.max_name_length)
        if page_token and not _PAGE_TOKEN.fullmatch(page_token):
            raise invalid(f"page_token {page_token[:40]!r} is not one this server issued")
        after = int(page_token) if page_token else 0
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        with self._lock:
            if after > max(self._last_sequence, self._table.newest_sequence):
                raise invalid(f"page_token {page_token} is not one this server issued (its last"
                              f" sequence is {self._last_sequence})")
            objects, more = self._table.page(prefix, after, limit)
        entries = list(map(_list_entry, objects))
        room = self.config.max_response_size - _LIST_TOKEN_ROOM
        if sum(map(len, entries)) > room:  # large labels: a shorter page
            fitting = list(itertools.accumulate(map(len, entries)))
            count = max(bisect.bisect_right(fitting, room), 1)
            entries, objects, more = entries[:count], objects[:count], True
        # The records are the page's ObjectMeta fields already encoded: parsed once, whole.
        response = pb.ListResponse.FromString(b"".join(entries))
        if more:
            response.next_page_token = str(objects[-1].sequence)
        return response

    def info(self) -> pb.InfoResponse:
        """What the server is, what it enforces and how much it holds."""
        config = self.config
        with self._lock:
            arena = self._resident.arena
            return pb.InfoResponse(
                version=__version__,
                store_id=self.store_id,
                durability=_DURABILITY[config.durability],
                limits=pb.Limits(
                    max_object_size=config.max_object_size,
                    inline_limit=config.inline_limit,
                    max_name_length=config.max_name_length,
                    max_batch_size=config.max_batch_size,
                    max_message_size=config.max_message_size,
                    shm_min_size=config.shm_min_size,
                    max_subscribers=config.max_subscribers,
                    subscriber_buffer=config.subscriber_buffer,
                    max_streams=config.max_streams,
                    max_response_size=config.max_response_size,
                    max_chunk_size=config.inline_limit,
                ),
                object_count=len(self._table),
                total_bytes=self._table.total_bytes,
                last_sequence=self._last_sequence,
                oldest_sequence=self._events.oldest_sequence(self._last_sequence),
                committed_sequence=self._committer.durable_sequence if self._committer else 0,
                start_time=Timestamp(seconds=int(self.start_time)),
                subscriber_count=len(self._hub),
                arena=pb.ArenaUsage(
                    capacity=arena.capacity,
                    used=arena.used,
                    pinned=self._resident.pinned_bytes + self._sessions.pending_bytes,
                    evictions=self._resident.evictions,
                    segments=arena.segment_count,
                    sessions=len(self._sessions),
                    resident_objects=len(self._resident),
                ),
                locality_token_name=self.shm.token_name,
                locality_token=self.shm.token,
                stats=pb.ServerStats(subscriber_lag=self._hub.max_lag(self._last_sequence)),
                object_index=None if (index := self._resident.index) is None else index.layout(),
            )

    def subscriber_lag(self) -> int:
        """Events the furthest-behind subscriber has yet to receive."""
        return self._hub.max_lag(self._last_sequence)

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(
        self, prefix: str, since: int | None, *, store_id: str = "", from_oldest: bool = False
    ) -> Subscription:
        """Events for names starting with ``prefix``: history from ``since`` (or from the
        oldest retained), then live.

        ``store_id``, when given, is the store the caller's ``since`` came from:
        another one is FAILED_PRECONDITION, and a ``since`` this store never
        issued is OUT_OF_RANGE, both naming this store. The iterator ends when
        closed; raises RESOURCE_EXHAUSTED (with where to resume) if it falls
        behind, UNAVAILABLE when the store stops.
        """
        validation.check_prefix(prefix, self.config.max_name_length)
        if from_oldest and since is not None:
            raise invalid("from_oldest replaces since_sequence: give one of them")
        with self._lock:
            self._check_open()
            if self._resyncing:
                raise unavailable(
                    f"this store is copying a snapshot of its primary {self.primary}; subscribe"
                    " again in a moment (its history before the snapshot will be gone)"
                )
            if len(self._hub) >= self.config.max_subscribers:
                raise exhausted(
                    f"too many subscribers: {self.config.max_subscribers} are already connected"
                    " (the server's max_subscribers)"
                )
            last = self._last_sequence
            oldest = self._events.oldest_sequence(last)
            if store_id and store_id != self.store_id and not self._continues(store_id, since):
                raise resume_impossible(
                    Code.FAILED_PRECONDITION,
                    f"this is store {self.store_id}, not {store_id}: its data started over, so"
                    " its sequence numbers are not that store's; start again from a listing",
                    self.store_id, oldest,
                )
            if from_oldest:
                since = oldest
            if since is not None:
                since = max(since, 1)
                horizon = self._primary_horizon
                if self.primary and horizon is None and since > last + 1:
                    raise unavailable(
                        f"this follower has not reached its primary {self.primary} yet, so it"
                        f" cannot tell whether sequence {since - 1} was issued; retry shortly"
                    )
                if since > max(last, horizon or 0) + 1:
                    raise resume_impossible(
                        Code.OUT_OF_RANGE,
                        f"since_sequence {since} is beyond this store's last sequence {last}:"
                        f" store {self.store_id} never issued it (a store whose data started"
                        " over begins again at 1)",
                        self.store_id, oldest,
                    )
                self._events.check_retained(since, last)
            subscriber = Subscriber(
                prefix, since if since is not None else last + 1, self.config.subscriber_buffer
            )
            self._hub.add(subscriber)
            tail = self._events.snapshot() if since is not None else []
        history = self._events.replay(since, last, tail) if since is not None else iter(())
        return Subscription(subscriber, history, on_end=self._hub.remove)

    # -- replication: how a follower writes ----------------------------------------

    @property
    def last_sequence(self) -> int:
        """The sequence of the latest change; a follower's is the last it applied."""
        with self._lock:
            return self._last_sequence

    @property
    def newest_object_sequence(self) -> int:
        """The highest sequence of any object held (after a follower's interrupted resync,
        beyond ``last_sequence``)."""
        with self._lock:
            return self._table.newest_sequence

    def event_at(self, sequence: int) -> pb.Event | None:
        """The retained event with this sequence, if any."""
        with self._lock:
            tail = self._events.snapshot()
        try:
            return next(self._events.replay(sequence, sequence, tail), None)
        except StoreError:  # trimmed meanwhile
            return None

    def primary_issued(self, sequence: int) -> None:
        """A follower's primary has issued ``sequence``: a subscriber may resume up to it
        here (after a crash, a follower applies again what it had not committed)."""
        with self._lock:
            self._primary_horizon = max(self._primary_horizon or 0, sequence)

    def holds(self, object_id: bytes, sequence: int) -> bool:
        """Whether the object stored at ``sequence`` is here (a follower's snapshot may
        have copied it before its event arrives)."""
        with self._lock:
            obj = self._table.by_id(object_id)
            return obj is not None and obj.sequence == sequence

    def replica_region(self, size: int) -> Region:
        """A region for a payload a follower copies from its primary."""
        return self._allocate(size)

    def apply(self, event: pb.Event, region: Region | None) -> None:
        """Make one of the primary's changes here under its sequence number: a follower's
        way to write.

        ``region`` holds the payload of a PUT or REPLACE, or is None when the
        object was gone from the primary before it could be copied (a later
        event removes it), so that only the event is kept.
        """
        meta = event.meta
        with self._lock:
            if self._closing or not self.primary or event.sequence <= self._last_sequence:
                if region is not None:
                    self._resident.free(region)
                self._check_open()
                raise StoreError(Code.FAILED_PRECONDITION,
                                 f"event {event.sequence} cannot be applied: this store is a"
                                 f" primary, or at sequence {self._last_sequence} already")
            self._last_sequence = self._reserved_through = event.sequence
            gone = [meta.id] if event.type == pb.EVENT_TYPE_DELETE else list(event.replaced_ids)
            held = self._table.by_id(meta.id) if region is not None else None
            if held is not None and held.sequence != meta.sequence:
                gone.append(meta.id)  # an older object under a reused ID
            dropped = [self._table.remove(object_id) for object_id in gone
                       if object_id in self._table]
            for older in dropped:
                self._drop(older)
            stored = None
            if region is not None and held is not None and held.sequence == meta.sequence:
                self._resident.free(region)  # the snapshot copied it already
            elif region is not None:
                obj = StoredObject.of(meta, committing=self._backend is not None)
                self._table.add(obj, meta.name)
                self._resident.admit(obj, region, meta)
                if obj.committing:
                    self._uncommitted.append(obj)
                stored = (meta, region.view())
            removed = [older.object_id for older in dropped]
            self._record(Change(event=event, stored=stored, removed=removed), dropped)
            self._changed.notify_all()

    def adopt(self, store_id: str) -> None:
        """Take the primary's identity: a new follower that replays its whole history, or
        one whose primary was promoted from the store it copied."""
        with self._lock:
            if self._backend is not None:
                self._backend.adopt_store_id(store_id)
            self.store_id = store_id
            self.promoted_from = None

    def _continues(self, store_id: str, since: int | None) -> bool:
        """Whether a resume from ``since`` of store ``store_id`` goes on here: this store
        was promoted from it, and its history up to the promotion is this one's."""
        promoted = self.promoted_from
        return (promoted is not None and promoted[0] == store_id
                and (since or 0) <= promoted[1] + 1)

    def primary_status(self) -> pb.Replication:
        """Info.replication of a primary."""
        promoted = self.promoted_from
        if promoted is None:
            return pb.Replication(role=pb.ROLE_PRIMARY)
        return pb.Replication(role=pb.ROLE_PRIMARY, promoted_from=promoted[0],
                              promoted_at_sequence=promoted[1])

    def begin_resync(self) -> dict[bytes, tuple[int, int, int]]:
        """Prepare to copy a snapshot of the primary, whose history here is about to be cut:
        end the subscriptions, commit what is queued; return every held object's
        (sequence, size, CRC32C), to compare with the primary's."""
        with self._lock:
            self._check_open()
            self._resyncing = True
            held = {obj.object_id: _identity(obj.meta) for obj in self._table.matching("", 0)}
        self._hub.close_all(unavailable(
            f"this store is copying a snapshot of its primary {self.primary}: its history"
            " before the snapshot will be gone; list it again"
        ))
        if self._committer is not None:
            self._committer.commit_now().wait()
        return held

    def resync_remove(self, object_ids: Sequence[bytes]) -> None:
        """Drop held objects the primary does not hold (durably, without events)."""
        with self._lock:
            dropped = [self._table.remove(object_id) for object_id in object_ids
                       if object_id in self._table]
            for obj in dropped:
                self._drop(obj)
        if self._backend is not None and dropped:
            self._backend.write_objects((), [obj.object_id for obj in dropped])

    def resync_add(self, copied: Sequence[tuple[pb.ObjectMeta, Region]]) -> None:
        """Keep objects copied from the primary's snapshot: on disk first, so they are
        evictable at once."""
        try:
            if self._backend is not None:
                self._backend.write_objects([(meta, region.view()) for meta, region in copied], ())
        except BaseException:
            for _, region in copied:
                self.discard(region)
            raise
        with self._lock:
            for meta, region in copied:
                if meta.id in self._table:
                    self._drop(self._table.remove(meta.id))
                obj = StoredObject.of(meta)
                self._table.add(obj, meta.name)
                self._resident.admit(obj, region, meta)

    def end_resync(self, sequence: int, store_id: str) -> None:
        """The snapshot is complete as of store ``store_id``'s ``sequence``: history here
        starts after it, under that store's identity."""
        if self._backend is not None:
            self._backend.restart_history(sequence, store_id)
        with self._lock:
            self._events = EventLog(self._backend, self.config.event_retention, sequence)
            self._events.committed(sequence)
            self._last_sequence = self._reserved_through = sequence
            if self._committer is not None:
                self._committer.durable_sequence = sequence
            self.store_id = store_id
            self.promoted_from = None
            self._resyncing = False
            self._changed.notify_all()

    def promote(self) -> pb.PromoteResponse:
        """Stop being a follower: take writes, under a new identity, from the last sequence
        applied on (the caller has stopped applying)."""
        with self._lock:
            self._check_open()
            if not self.primary:
                raise StoreError(Code.FAILED_PRECONDITION, "this store is a primary already")
            if self._resyncing:
                log.warning("promoted in the middle of a resync: some of the primary's"
                            " objects were not copied")
            self.primary = ""
            self._resyncing = False
            self._primary_horizon = None
            self.promoted_from = (self.store_id, self._last_sequence)
            self.store_id = uuid.uuid4().hex
            if self._backend is not None:
                self._backend.adopt_store_id(self.store_id, self.promoted_from)
            self._reserved_through = self._last_sequence
            log.info("promoted to primary as store %s at sequence %d", self.store_id,
                     self._last_sequence)
            return pb.PromoteResponse(store_id=self.store_id, last_sequence=self._last_sequence)

    # -- lifecycle --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise unavailable()

    def check_writable(self) -> None:
        """FAILED_PRECONDITION, naming the primary, if this store is a follower."""
        if self.primary:
            raise read_only(self.primary)

    def begin_shutdown(self) -> None:
        """Refuse new work, end waits and subscriptions; in-flight writes still finish."""
        with self._lock:
            self._closing = True
            self._changed.notify_all()
            self._sessions.end_all()
        self._hub.close_all()

    def close(self) -> None:
        """Flush to disk, release shared memory. Call after the transport has stopped."""
        self.begin_shutdown()
        if self._committer is not None:
            self._committer.close()
        if self._wal is not None:
            self._wal.close()
        if self._backend is not None:
            self._backend.close(last_sequence=self._last_sequence)
        if self._resident.index is not None:
            self._resident.index.close()
        if self._resident.pins is not None:
            self._resident.pins.close_all()
        self._resident.arena.close()
        self.shm.close()
        log.info("store closed at sequence %d", self._last_sequence)


class Subscription:
    """Iterates replayed history, then live events; unregisters when it ends."""

    def __init__(
        self,
        subscriber: Subscriber,
        history: Iterator[pb.Event],
        on_end: Callable[[Subscriber], None],
    ) -> None:
        self._subscriber = subscriber
        self._history = history
        self._on_end = on_end

    def close(self) -> None:
        """Stop the iteration, e.g. when the client cancels its stream, and unregister
        (which iterating never started, if the client left first, cannot do)."""
        self._subscriber.close()
        self._on_end(self._subscriber)

    def __iter__(self) -> Iterator[pb.Event]:
        try:
            for event in self._history:
                if self._subscriber.matches(event):
                    self._subscriber.delivered = event.sequence
                    yield event
            yield from self._subscriber.live()
        finally:
            self._on_end(self._subscriber)

    def batches(self, size: int) -> Iterator[list[pb.Event]]:
        """The same events, up to ``size`` at a time: as many as are waiting."""
        try:
            history = filter(self._subscriber.matches, self._history)
            while chunk := list(itertools.islice(history, size)):
                yield chunk
                self._subscriber.delivered = chunk[-1].sequence
            for batch in self._subscriber.live_batches():
                for start in range(0, len(batch), size):
                    yield batch[start:start + size]
        finally:
            self._on_end(self._subscriber)


def _set_now(timestamp: Timestamp) -> None:
    """Set a Timestamp to now (Timestamp.GetCurrentTime goes through datetime: slower)."""
    timestamp.seconds, timestamp.nanos = divmod(time.time_ns(), 1_000_000_000)


def _identity(meta: pb.ObjectMeta) -> tuple[int, int, int]:
    """What tells two copies of an object apart: sequence, size and CRC32C."""
    return meta.sequence, meta.size, meta.crc32c


def _list_entry(obj: StoredObject) -> bytes:
    """The object's metadata as ListResponse field 1 (objects), in wire format."""
    return _OBJECTS_TAG + _varint(len(obj.record)) + obj.record


_LIST_TOKEN_ROOM = 64  # a ListResponse's next_page_token field, at most
_OBJECTS_TAG = bytes([(pb.ListResponse.OBJECTS_FIELD_NUMBER << 3) | 2])  # length-delimited


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while value > 0x7F:
        encoded.append((value & 0x7F) | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def _exists(object_id: bytes) -> StoreError:
    return StoreError(Code.ALREADY_EXISTS, f"object {object_id.hex()} already exists")


def _describe(ref: pb.ObjectRef) -> str:
    if ref.WhichOneof("ref") == "id":
        return f"with ID {ref.id.hex()}"
    return f"named {ref.name!r}"
