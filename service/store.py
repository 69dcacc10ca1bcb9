"""The store core: objects, names, sequence, durability and events, independent of transport.

Every change happens under one lock, gets the next sequence number, updates
the table, joins the event log, reaches subscribers and is queued for disk,
in that order, so all of them agree on one history. Waiting for the disk
(``sync`` mode) and reading payloads back from disk happen outside the lock.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import crc32c
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from improv_store import __version__
from improv_store.v1 import store_pb2 as pb

from . import validation
from .committer import Committer, Ticket
from .config import ServerConfig
from .durability import Change, LmdbBackend
from .errors import StoreError, exhausted, invalid, not_found, unavailable
from .eventlog import EventLog
from .objects import ObjectTable, StoredObject
from .subscriptions import Subscriber, SubscriberHub

log = logging.getLogger(__name__)

SEQUENCE_RESERVATION = 10_000
_PAGE_TOKEN = re.compile(r"[1-9][0-9]*")
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100

_DURABILITY = {
    "sync": pb.DURABILITY_SYNC,
    "async": pb.DURABILITY_ASYNC,
    "none": pb.DURABILITY_NONE,
}


@dataclass(frozen=True)
class Stored:
    """The outcome of a put: the new object's metadata and what it replaced."""

    meta: pb.ObjectMeta
    replaced_ids: list[bytes]


class Store:
    """Thread-safe object store; the gRPC servicer is a thin layer over it."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.start_time = time.time()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closing = False
        self._table = ObjectTable()
        self._hub = SubscriberHub()
        self._backend: LmdbBackend | None = None
        self._committer: Committer | None = None
        self._last_sequence = 0
        self._reserved_through = 0
        trimmed_through = 0
        if config.durability != "none":
            self._backend = LmdbBackend(
                config.data_dir,
                initial_map_size=config.initial_map_size,
                event_retention=config.event_retention,
            )
            recovered = self._backend.recover()
            for meta in recovered.objects:
                self._table.add(StoredObject(meta=meta, payload=None))
            self._last_sequence = self._reserved_through = recovered.last_sequence
            trimmed_through = recovered.trimmed_through
            log.info(
                "recovered %d objects (%d bytes) from %s; last sequence %d",
                len(self._table),
                self._table.total_bytes,
                config.data_dir,
                self._last_sequence,
            )
        self._events = EventLog(self._backend, config.event_retention, trimmed_through)
        self._events.committed(self._last_sequence)
        if self._backend is not None:
            self._committer = Committer(
                self._backend,
                group_commit=config.durability == "sync",
                interval=config.commit_interval,
                on_commit=self._events.committed,
            )

    # -- writes ---------------------------------------------------------------------

    def check_new(self, spec: pb.ObjectSpec, size: int) -> None:
        """Validate a new object before its payload arrives (PutStream checks early)."""
        validation.check_spec(spec, size, self.config.max_object_size, self.config.max_name_length)

    def put(
        self,
        spec: pb.ObjectSpec,
        payload: bytes | memoryview,
        *,
        replace: bool = False,
        checksum: int | None = None,
    ) -> Stored:
        """Store one object; with ``replace``, delete the older objects of its name too.

        ``checksum`` is the payload's CRC32C when the caller already computed it.
        """
        self.check_new(spec, len(payload))
        if replace and not spec.name:
            raise invalid("replace needs a name")
        if checksum is None:
            checksum = crc32c.crc32c(payload)
        if spec.HasField("crc32c") and spec.crc32c != checksum:
            raise StoreError(
                grpc.StatusCode.DATA_LOSS,
                f"payload CRC32C is {checksum:#010x}, the request says {spec.crc32c:#010x}",
            )
        meta = pb.ObjectMeta(
            id=spec.id or os.urandom(validation.ID_LENGTH),
            name=spec.name,
            size=len(payload),
            encoding=spec.encoding or pb.ENCODING_RAW,
            crc32c=checksum,
            labels=spec.labels,
        )
        if spec.HasField("array"):
            meta.array.CopyFrom(spec.array)
        meta.create_time.GetCurrentTime()
        with self._lock:
            self._check_open()
            if meta.id in self._table:
                raise StoreError(
                    grpc.StatusCode.ALREADY_EXISTS, f"object {meta.id.hex()} already exists"
                )
            replaced = self._table.ids_named(meta.name) if replace else []
            sequence = self._next_sequence()
            meta.sequence = sequence
            self._table.add(StoredObject(meta=meta, payload=payload))
            for object_id in replaced:
                self._table.remove(object_id)
            event = pb.Event(
                sequence=sequence,
                type=pb.EVENT_TYPE_REPLACE if replace else pb.EVENT_TYPE_PUT,
                meta=meta,
                replaced_ids=replaced,
                time=meta.create_time,
            )
            ticket = self._record(Change(event=event, stored=(meta, payload), removed=replaced))
            self._changed.notify_all()
        self._await_durable(ticket)
        return Stored(meta=meta, replaced_ids=replaced)

    def delete(self, ref: pb.ObjectRef) -> list[bytes]:
        """Delete one object by ID, or every object with a name; return the deleted IDs."""
        validation.check_ref(ref, self.config.max_name_length)
        ticket = None
        with self._lock:
            self._check_open()
            if ref.WhichOneof("ref") == "id":
                ids = [ref.id] if ref.id in self._table else []
            else:
                ids = self._table.ids_named(ref.name)
            if not ids:
                raise not_found(f"no object {_describe(ref)}")
            for object_id in ids:
                removed = self._table.remove(object_id)
                event = pb.Event(
                    sequence=self._next_sequence(), type=pb.EVENT_TYPE_DELETE, meta=removed.meta
                )
                event.time.GetCurrentTime()
                ticket = self._record(Change(event=event, removed=(object_id,)))
        self._await_durable(ticket)
        return ids

    def _next_sequence(self) -> int:
        self._last_sequence += 1
        if self._backend is not None and self._last_sequence > self._reserved_through:
            self._reserved_through = self._last_sequence + SEQUENCE_RESERVATION
            self._backend.reserve_sequences(self._reserved_through)
        return self._last_sequence

    def _record(self, change: Change) -> Ticket | None:
        self._events.append(change.event)
        self._hub.publish(change.event)
        return self._committer.submit(change) if self._committer else None

    def _await_durable(self, ticket: Ticket | None) -> None:
        if ticket is not None and self.config.durability == "sync":
            ticket.wait()

    # -- reads ----------------------------------------------------------------------

    def get(self, ref: pb.ObjectRef, wait: float = 0.0) -> StoredObject:
        """Find an object, waiting up to ``wait`` seconds for it to appear.

        Waiting past ``wait`` is DEADLINE_EXCEEDED. The payload may still be
        on disk only: read it through ``payload``.
        """
        validation.check_ref(ref, self.config.max_name_length)
        deadline = time.monotonic() + wait
        with self._lock:
            while True:
                self._check_open()
                obj = self._lookup(ref)
                if obj is not None:
                    break
                remaining = deadline - time.monotonic()
                if wait <= 0:
                    raise not_found(f"no object {_describe(ref)}")
                if remaining <= 0:
                    raise StoreError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"object {_describe(ref)} did not appear within {wait:g} s",
                    )
                self._changed.wait(min(remaining, threading.TIMEOUT_MAX))
        return obj

    def get_many(
        self, refs: list[pb.ObjectRef], wait: float = 0.0
    ) -> list[StoredObject | StoreError]:
        """Look up several objects; each entry is the object or the error for it."""
        if len(refs) > self.config.max_batch_size:
            raise invalid(f"{len(refs)} refs; a batch holds at most {self.config.max_batch_size}")
        deadline = time.monotonic() + wait
        results: list[StoredObject | StoreError] = []
        for ref in refs:
            try:
                results.append(
                    self.get(ref, max(0.0, deadline - time.monotonic()) if wait else 0.0)
                )
            except StoreError as exc:
                if exc.code == grpc.StatusCode.UNAVAILABLE:
                    raise
                results.append(exc)
        return results

    def _lookup(self, ref: pb.ObjectRef) -> StoredObject | None:
        if ref.WhichOneof("ref") == "id":
            return self._table.by_id(ref.id)
        return self._table.newest(ref.name)

    def payload(self, obj: StoredObject) -> bytes | memoryview:
        """An object's payload, read back from disk (checksum verified) if not in memory."""
        if obj.payload is None:
            payload = self._backend.read_payload(obj.meta) if self._backend else None
            if payload is None:
                raise not_found(f"object {obj.meta.id.hex()} was deleted")
            obj.payload = payload
        return obj.payload

    def list(self, prefix: str, page_size: int, page_token: str) -> tuple[list[pb.ObjectMeta], str]:
        """One page of objects whose name starts with ``prefix``, in sequence order."""
        if len(prefix.encode()) > self.config.max_name_length:
            raise invalid(f"prefix is longer than the name limit of {self.config.max_name_length}")
        if page_token and not _PAGE_TOKEN.fullmatch(page_token):
            raise invalid(f"page_token {page_token[:40]!r} is not one this server issued")
        after = int(page_token) if page_token else 0
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        with self._lock:
            metas, more = self._table.page(prefix, after, limit)
        return metas, str(metas[-1].sequence) if more else ""

    def info(self) -> pb.InfoResponse:
        """What the server is, what it enforces and how much it holds."""
        config = self.config
        with self._lock:
            response = pb.InfoResponse(
                version=__version__,
                durability=_DURABILITY[config.durability],
                limits=pb.Limits(
                    max_object_size=config.max_object_size,
                    inline_limit=config.inline_limit,
                    max_name_length=config.max_name_length,
                    max_batch_size=config.max_batch_size,
                    max_message_size=config.max_message_size,
                ),
                object_count=len(self._table),
                total_bytes=self._table.total_bytes,
                last_sequence=self._last_sequence,
                oldest_sequence=self._events.oldest_sequence(self._last_sequence),
                committed_sequence=self._events.committed_sequence if self._backend else 0,
                start_time=Timestamp(seconds=int(self.start_time)),
                subscriber_count=len(self._hub),
            )
        return response

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(self, prefix: str, since: int | None) -> Subscription:
        """Events for names starting with ``prefix``: history from ``since``, then live.

        The iterator ends when closed; raises RESOURCE_EXHAUSTED (with where to
        resume) if it falls behind, UNAVAILABLE when the store stops.
        """
        if len(prefix.encode()) > self.config.max_name_length:
            raise invalid(f"prefix is longer than the name limit of {self.config.max_name_length}")
        if len(self._hub) >= self.config.max_subscribers:
            raise exhausted(f"{self.config.max_subscribers} subscribers are already connected")
        with self._lock:
            self._check_open()
            last = self._last_sequence
            if since is not None:
                since = max(since, 1)
                self._events.check_retained(since, last)
            subscriber = Subscriber(
                prefix, since if since is not None else last + 1, self.config.subscriber_buffer
            )
            self._hub.add(subscriber)
            tail = self._events.snapshot() if since is not None else []
        history = self._events.replay(since, last, tail) if since is not None else iter(())
        return Subscription(subscriber, history, on_end=self._hub.remove)

    # -- lifecycle --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise unavailable()

    def begin_shutdown(self) -> None:
        """Refuse new work, end waits and subscriptions; in-flight writes still finish."""
        with self._lock:
            self._closing = True
            self._changed.notify_all()
        self._hub.close_all()

    def close(self) -> None:
        """Flush everything to disk and release it. Call after the transport has stopped."""
        self.begin_shutdown()
        if self._committer is not None:
            self._committer.close()
        if self._backend is not None:
            self._backend.close(last_sequence=self._last_sequence)
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
        """Stop the iteration, e.g. when the client cancels its stream."""
        self._subscriber.close()

    def __iter__(self) -> Iterator[pb.Event]:
        try:
            for event in self._history:
                if self._subscriber.matches(event):
                    yield event
            yield from self._subscriber.live()
        finally:
            self._on_end(self._subscriber)


def _describe(ref: pb.ObjectRef) -> str:
    if ref.WhichOneof("ref") == "id":
        return f"with ID {ref.id.hex()}"
    return f"named {ref.name!r}"
