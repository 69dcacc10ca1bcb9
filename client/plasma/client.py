"""PlasmaClient and connect(): Plasma's Python client API over StoreClient."""

from __future__ import annotations

import base64
import builtins
import contextlib
import logging
import socket
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import crc32c
import numpy as np

from improv_store.client import codec
from improv_store.client.creation import Creation
from improv_store.client.errors import (
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StoreFull,
    StoreUnavailable,
    WaitTimeout,
)
from improv_store.client.ids import ObjectID as StoreObjectID
from improv_store.client.improv import store_address
from improv_store.client.store_client import StoreClient
from improv_store.client.subscription import Subscription

from . import notifications
from .buffer import (
    ObjectID,
    ObjectNotAvailable,
    PlasmaBuffer,
    PlasmaObjectExists,
    PlasmaObjectNotFound,
    PlasmaStoreFull,
)
from .notifications import Notification

log = logging.getLogger(__name__)

# The label that holds an object's Plasma metadata, base64-encoded.
METADATA_LABEL = "plasma.metadata"
# Plasma's default number of connection attempts, and its wait between them.
DEFAULT_RETRIES = 50
RETRY_DELAY = 0.1
# The least time connect waits for a store to answer (see connect).
START_GRACE = 10.0
# A wait "forever" (timeout_ms=-1) is asked for in waits of this many seconds.
_WAIT_STEP = 60.0


@contextlib.contextmanager
def _plasma_errors() -> Iterator[None]:
    """Raise the store's refusals as Plasma's exceptions."""
    try:
        yield
    except ObjectExists as exc:
        raise PlasmaObjectExists(exc.message) from None
    except StoreFull as exc:
        raise PlasmaStoreFull(exc.message) from None
    except ObjectNotFound as exc:
        raise PlasmaObjectNotFound(exc.message) from None


def _id(object_id: Any) -> ObjectID:
    """An ObjectID of this module from any object ID with ``binary()``."""
    if type(object_id) is ObjectID:
        return object_id
    if isinstance(object_id, StoreObjectID) or hasattr(object_id, "binary"):
        return ObjectID(object_id.binary())
    raise TypeError(f"expected an ObjectID, not {type(object_id).__name__}")


def _labels(metadata: bytes) -> dict[str, str] | None:
    return {METADATA_LABEL: base64.b64encode(metadata).decode()} if metadata else None


def _metadata(labels: dict[str, str]) -> bytes:
    encoded = labels.get(METADATA_LABEL)
    return base64.b64decode(encoded) if encoded else b""


class PlasmaClient:
    """A connection to an improv-store server with the methods of pyarrow 11's PlasmaClient.

    Values: ``put`` stores numpy arrays as arrays (read back as views on the
    store's shared memory when colocated), ``bytes`` as raw bytes and
    anything else pickled: improv-store's codec, where Plasma used Arrow's
    (removed) serialization. Raw buffers (``put_raw_buffer``, ``create``)
    are uint8 arrays; their Plasma metadata is kept in the object's label
    ``plasma.metadata`` (base64). Use ``connect`` to make one.
    """

    def __init__(self, store: StoreClient, store_socket_name: str) -> None:
        self._store: StoreClient | None = store
        self.store_socket_name = store_socket_name
        # Objects being created by this client, until sealed: their ``with`` blocks and sizes.
        self._creations: dict[ObjectID, tuple[Creation, int, int]] = {}
        self._creations_lock = threading.Lock()
        # Arrays this client handed out per object, so release(object_id) can give them back.
        self._in_use: dict[ObjectID, builtins.list[weakref.ref[np.ndarray]]] = {}
        self._notify_socket: socket.socket | None = None
        self._subscription: Subscription | None = None

    @property
    def store(self) -> StoreClient:
        """The improv_store.client.StoreClient underneath (StoreUnavailable once disconnected)."""
        if self._store is None:
            raise StoreUnavailable(f"disconnected from the store at {self.store_socket_name}")
        return self._store

    # -- writing ----------------------------------------------------------------------

    def put(
        self,
        value: Any,
        object_id: ObjectID | None = None,
        memcopy_threads: int = 6,
        serialization_context: Any = None,
    ) -> ObjectID:
        """Store a Python value (see the class for how); return its ID.

        ``memcopy_threads`` and ``serialization_context`` are accepted and
        ignored (the copy into shared memory picks its own threads).
        """
        with _plasma_errors():
            stored = self.store.put(value, id=_id(object_id) if object_id is not None else None)
        return ObjectID(stored.binary())

    def put_raw_buffer(
        self,
        value: Any,
        object_id: ObjectID | None = None,
        metadata: bytes = b"",
        memcopy_threads: int = 6,
    ) -> ObjectID:
        """Store the bytes of a buffer-protocol object, with ``metadata``; return its ID."""
        data = np.frombuffer(memoryview(value).cast("B"), dtype=np.uint8)
        target = _id(object_id) if object_id is not None else None
        with _plasma_errors():
            stored = self.store.put(data, id=target, labels=_labels(bytes(metadata)))
        return ObjectID(stored.binary())

    def create(self, object_id: ObjectID, data_size: int, metadata: bytes = b"") -> PlasmaBuffer:
        """A writable buffer of ``data_size`` bytes for a new object; ``seal`` stores it.

        Colocated, the buffer is the object's own shared memory (writes land in
        place); otherwise a local buffer sent at ``seal``. PlasmaObjectExists
        if the ID is taken, PlasmaStoreFull if the store cannot make room.
        """
        object_id = _id(object_id)
        creation = self.store.create(
            (int(data_size),), np.uint8, id=object_id, labels=_labels(bytes(metadata))
        )
        with self._creations_lock:
            if object_id in self._creations:
                raise PlasmaObjectExists("object already exists in the plasma store")
            with _plasma_errors():
                if not self.store.colocated and self.contains(object_id):
                    raise ObjectExists("object already exists in the plasma store")
                array = creation.__enter__()
            self._creations[object_id] = (creation, int(data_size), len(metadata))
        buffer = PlasmaBuffer.wrap(array, object_id)
        self._track(object_id, array)
        return buffer

    def seal(self, object_id: ObjectID) -> None:
        """Store the object ``create`` made: from now on others can get it."""
        object_id = _id(object_id)
        with self._creations_lock:
            pending = self._creations.pop(object_id, None)
        if pending is None:
            if self.contains(object_id):
                raise TypeError("Seal() called on an already sealed object")
            raise PlasmaObjectNotFound("Seal() called on an object without a reference to it")
        with _plasma_errors():
            pending[0].__exit__(None, None, None)

    def create_and_seal(self, object_id: ObjectID, data: bytes, metadata: bytes = b"") -> None:
        """Store ``data`` with ``metadata`` under ``object_id`` in one step."""
        self.put_raw_buffer(data, object_id, metadata)

    def delete(self, object_ids: Sequence[ObjectID]) -> None:
        """Delete these objects; IDs not in the store are ignored, as in Plasma."""
        for object_id in object_ids:
            with contextlib.suppress(ObjectNotFound):
                self.store.delete(_id(object_id))

    def evict(self, num_bytes: int) -> int:
        """Plasma freed least-recently-used objects here; improv-store evicts from shared
        memory to its LMDB by itself when it needs room, so this frees nothing: 0."""
        return 0

    # -- reading ----------------------------------------------------------------------

    def get(
        self, object_ids: Any, timeout_ms: int = -1, serialization_context: Any = None
    ) -> Any:
        """The value of one object, or a list of values for a list of IDs; an object not
        there within ``timeout_ms`` (-1: wait for ever, 0: don't wait) is ObjectNotAvailable.

        A raw buffer (``put_raw_buffer``, ``create``) comes back as a uint8 array,
        where Plasma raised. Arrays are read-only views on shared memory when colocated.
        """
        if isinstance(object_ids, Sequence):
            return self._fetch(list(object_ids), timeout_ms)
        return self._fetch([object_ids], timeout_ms)[0]

    def get_buffers(
        self, object_ids: Sequence[ObjectID], timeout_ms: int = -1, with_meta: bool = False
    ) -> builtins.list[Any]:
        """Each object's bytes as a PlasmaBuffer (None if not available in time); with
        ``with_meta``, ``(metadata, buffer)`` pairs, metadata first, as pyarrow returns them.

        An array's or raw buffer's bytes are a view (on shared memory when
        colocated); a pickled value's are its pickle, encoded again (a copy).
        """
        ids = [_id(object_id) for object_id in object_ids]
        values = self._fetch(ids, timeout_ms)
        buffers = [
            None if value is ObjectNotAvailable else self._buffer(object_id, value)
            for object_id, value in zip(ids, values, strict=True)
        ]
        if not with_meta:
            return buffers
        return [
            (None, None) if buffer is None else (self._metadata_of(object_id), buffer)
            for object_id, buffer in zip(ids, buffers, strict=True)
        ]

    def get_metadata(
        self, object_ids: Sequence[ObjectID], timeout_ms: int = -1
    ) -> builtins.list[Any]:
        """Each object's metadata as a read-only PlasmaBuffer (None if not available in time)."""
        ids = [_id(object_id) for object_id in object_ids]
        found = self._wait_for(ids, timeout_ms)
        return [
            PlasmaBuffer.wrap(np.frombuffer(self._metadata_of(object_id), np.uint8), object_id)
            if present else None
            for object_id, present in zip(ids, found, strict=True)
        ]

    def contains(self, object_id: ObjectID) -> bool:
        """Whether the object is in the store (or being created by this client, as Plasma)."""
        object_id = _id(object_id)
        if object_id in self._creations:
            return True
        try:
            self.store.stat(object_id)
        except ObjectNotFound:
            return False
        return True

    def hash(self, object_id: ObjectID) -> bytes:
        """An 8-byte digest of the object's data and metadata (equal content, equal digest):
        the payload's CRC32C and the metadata's, where Plasma used XXH64."""
        with _plasma_errors():
            info = self.store.stat(_id(object_id))
        return info.crc32c.to_bytes(4, "little") + crc32c.crc32c(
            _metadata(info.labels)
        ).to_bytes(4, "little")

    def release(self, object_id: ObjectID) -> None:
        """Give back now the shared memory behind the arrays and buffers this client got for
        the object, instead of when they are garbage; they must not be read afterwards."""
        for reference in self._in_use.pop(_id(object_id), []):
            array = reference()
            if array is not None:
                self.store.release(array)

    _release = release  # pyarrow 11's name for it

    def list(self) -> dict[ObjectID, dict[str, Any]]:
        """Every object: data_size, metadata_size, ref_count (0: not tracked), create_time
        (Unix seconds), construct_duration (0; -1 while created) and state."""
        listing = {
            ObjectID(info.id.binary()): {
                "data_size": info.size,
                "metadata_size": len(_metadata(info.labels)),
                "ref_count": 0,
                "create_time": int(info.created.timestamp()),
                "construct_duration": 0,
                "state": "sealed",
            }
            for info in self.store.list()
        }
        with self._creations_lock:
            for object_id, (_, data_size, metadata_size) in self._creations.items():
                listing[object_id] = {
                    "data_size": data_size,
                    "metadata_size": metadata_size,
                    "ref_count": 1,
                    "create_time": int(time.time()),
                    "construct_duration": -1,
                    "state": "created",
                }
        return listing

    def store_capacity(self) -> int:
        """The bytes of shared memory the store holds objects in (its ``--memory``)."""
        return self.store.info().arena_capacity

    def debug_string(self) -> str:
        """A few lines on the store's state."""
        info = self.store.info()
        return (
            f"improv-store {info.version} at {self.store_socket_name}\n"
            f"objects: {info.object_count}\n"
            f"capacity: {info.arena_capacity}\n"
            f"used: {info.arena_used}\n"
            f"pinned: {info.arena_pinned}\n"
            f"evictions: {info.evictions}\n"
        )

    # -- notifications ----------------------------------------------------------------

    def subscribe(self) -> None:
        """Start notifications: one for each object already stored, then one per object
        stored or deleted, read with ``get_next_notification`` or from the socket."""
        if self._notify_socket is not None:
            return
        subscription = self.store.subscribe()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._subscription, self._notify_socket = subscription, theirs
        threading.Thread(
            target=self._notify, args=(subscription, ours), name="plasma-notify", daemon=True
        ).start()

    def _notify(self, subscription: Subscription, out: socket.socket) -> None:
        """Write the existing objects, then every event, to the notification socket."""
        try:
            with out:
                boundary = subscription.last_sequence
                for info in self.store.list():
                    if info.sequence <= boundary:
                        size = len(_metadata(info.labels))
                        out.sendall(notifications.encode([Notification(
                            info.id.binary(), info.size, size
                        )]))
                for event in subscription:
                    notes = [Notification(raw.binary(), -1, -1) for raw in event.replaced]
                    meta = event.object
                    if event.type == "delete":
                        notes.append(Notification(meta.id.binary(), -1, -1))
                    else:
                        size = len(_metadata(meta.labels))
                        notes.append(Notification(meta.id.binary(), meta.size, size))
                    for note in notes:
                        out.sendall(notifications.encode([note]))
        except (StoreError, OSError) as exc:
            log.debug("plasma notifications ended: %s", exc)

    def get_notification_socket(self) -> socket.socket:
        """The socket notifications arrive on (``subscribe`` first): each an 8-byte
        length and a PlasmaNotification flatbuffer, as Plasma's store wrote them."""
        if self._notify_socket is None:
            raise OSError("not subscribed: call subscribe() first")
        return self._notify_socket

    def get_next_notification(self) -> tuple[ObjectID, int, int]:
        """Wait for the next notification: (object ID, data size, metadata size), the sizes
        -1 for a deletion."""
        sock = self.get_notification_socket()
        header = _receive(sock, notifications.LENGTH.size)
        (length,) = notifications.LENGTH.unpack(header)
        note = notifications.decode(_receive(sock, length))[0]
        return ObjectID(note.object_id), note.data_size, note.metadata_size

    def decode_notifications(
        self, buf: bytes | bytearray | memoryview
    ) -> tuple[builtins.list[ObjectID], builtins.list[int], builtins.list[int]]:
        """The IDs, data sizes and metadata sizes in one notification message (its
        flatbuffer, without the length)."""
        notes = notifications.decode(buf)
        return (
            [ObjectID(note.object_id) for note in notes],
            [note.data_size for note in notes],
            [note.metadata_size for note in notes],
        )

    # -- connection -------------------------------------------------------------------

    def disconnect(self) -> None:
        """Close the connection: unsealed creations are dropped, notifications stop, and the
        server gives back this client's shared memory."""
        with self._creations_lock:
            creations, self._creations = list(self._creations.values()), {}
        for creation, _, _ in creations:
            with contextlib.suppress(StoreError):
                creation.__exit__(RuntimeError, RuntimeError("disconnected"), None)
        if self._subscription is not None:
            self._subscription.close()
        if self._notify_socket is not None:
            self._notify_socket.close()
        store, self._store = self._store, None
        if store is not None:
            store.close()

    # -- helpers ----------------------------------------------------------------------

    def _fetch(self, ids: builtins.list[Any], timeout_ms: int) -> builtins.list[Any]:
        """The values of ``ids`` (ObjectNotAvailable for those not there in time): all in
        one round trip when all are there, else one by one, within one deadline."""
        ids = [_id(object_id) for object_id in ids]
        try:
            values = self.store.get_many(ids)
        except ObjectNotFound:
            deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
            values = [self._get_one(object_id, deadline) for object_id in ids]
        for object_id, value in zip(ids, values, strict=True):
            if isinstance(value, np.ndarray):
                self._track(object_id, value)
        return values

    def _get_one(self, object_id: ObjectID, deadline: float | None) -> Any:
        while True:
            left = _WAIT_STEP if deadline is None else min(deadline - time.monotonic(), _WAIT_STEP)
            try:
                return self.store.get(object_id, timeout=left if left > 0 else None)
            except (ObjectNotFound, WaitTimeout):
                if deadline is not None and time.monotonic() >= deadline:
                    return ObjectNotAvailable

    def _wait_for(self, ids: builtins.list[ObjectID], timeout_ms: int) -> builtins.list[bool]:
        """Whether each object is there, waiting for it up to the deadline."""
        deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
        found = []
        for object_id in ids:
            while True:
                left = (
                    _WAIT_STEP if deadline is None
                    else min(deadline - time.monotonic(), _WAIT_STEP)
                )
                try:
                    self.store.stat(object_id, timeout=left if left > 0 else None)
                    found.append(True)
                    break
                except (ObjectNotFound, WaitTimeout):
                    if deadline is not None and time.monotonic() >= deadline:
                        found.append(False)
                        break
        return found

    def _metadata_of(self, object_id: ObjectID) -> bytes:
        with _plasma_errors():
            return _metadata(self.store.stat(object_id).labels)

    def _buffer(self, object_id: ObjectID, value: Any) -> PlasmaBuffer:
        """The bytes of a stored value: in place for arrays and bytes, else re-encoded."""
        if isinstance(value, np.ndarray) and (
            value.flags.c_contiguous or value.flags.f_contiguous
        ):
            return PlasmaBuffer.wrap(value, object_id)
        if isinstance(value, bytes):
            return PlasmaBuffer.wrap(np.frombuffer(value, np.uint8), object_id)
        encoded = np.frombuffer(codec.encode(value).to_bytes(), np.uint8)
        return PlasmaBuffer.wrap(encoded, object_id)

    def _track(self, object_id: ObjectID, array: np.ndarray) -> None:
        """Remember ``array`` for ``release(object_id)`` while it lives (forgotten after)."""

        def forget(reference: weakref.ref[np.ndarray]) -> None:
            references = self._in_use.get(object_id)
            if references is not None:
                with contextlib.suppress(ValueError):
                    references.remove(reference)
                if not references:
                    self._in_use.pop(object_id, None)

        self._in_use.setdefault(object_id, []).append(weakref.ref(array, forget))


def _receive(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from ``sock``; OSError if it closes first."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("Failed to read object notification from Plasma socket")
        data += chunk
    return bytes(data)


def connect(store_socket_name: str, num_retries: int = -1) -> PlasmaClient:
    """A PlasmaClient connected to the improv-store server listening on the unix socket
    ``store_socket_name`` (the server's ``--socket``, where ``plasma_store -s`` put
    Plasma's; a ``unix://`` address or ``host:port`` works too). Tries ``num_retries``
    times, 100 ms apart (-1: 50, Plasma's default), and for at least START_GRACE seconds:
    improv-store takes a second or more to start where Plasma took milliseconds, and
    callers such as improv's nexus connect right after starting it. StoreUnavailable, an
    OSError, after."""
    attempts = DEFAULT_RETRIES if num_retries < 0 else max(num_retries, 1)
    deadline = time.monotonic() + max(attempts * RETRY_DELAY, START_GRACE)
    store = StoreClient(store_address(store_socket_name))
    while True:
        try:
            store.info()
            break
        except StoreUnavailable:
            if time.monotonic() >= deadline:
                store.close()
                raise StoreUnavailable(
                    f"Could not connect to socket {store_socket_name}"
                ) from None
            time.sleep(RETRY_DELAY)
    return PlasmaClient(store, store_socket_name)
