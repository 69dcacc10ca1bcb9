"""A client that shares the server's /dev/shm: payloads move through that memory.

Such a client maps the server's segments once. It writes a payload into a
region the server hands out (Create's, or the one its last Seal reserved)
and reads a result as a view on the server's memory, holding a lease until
the view is garbage. Over the lane it also reads the server's object index
(index.py): a small object with no call at all, a large one in place under a
pin. StoreClient asks it first for a get by ID.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from typing import Any

from improv_store.v1 import store_pb2 as pb

from . import codec
from .errors import StoreError
from .ids import ObjectID, Ref
from .index import IndexReader, PinTable
from .lane import Lane
from .shm import SegmentMaps, read_only
from .transport import Transport

log = logging.getLogger(__name__)

# What read() returns for an object it cannot serve: ask the server.
MISS = object()
# A writer keeps a region of its last put's size reserved, up to this size
# (SealRequest.reserve_next): the next put of that size skips Create.
_RESERVE_MAX = 16 << 20


class Colocated:
    """The shared-memory state of a colocated client. Thread-safe."""

    def __init__(self, min_size: int, transfer: pb.Transfer) -> None:
        """``min_size``: payloads of this many bytes and more move through shared memory;
        ``transfer``: what requests ask for (TRANSFER_AUTO or TRANSFER_SHM)."""
        self.maps = SegmentMaps()
        self.min_size = min_size
        self.transfer = transfer
        self.index: IndexReader | None = None
        self._pins: PinTable | None = None  # the lane session's, for reading in place
        self._lane: Lane | None = None  # the lane whose server the index belongs to
        # (session ID, handle) of the region the server reserved for the next put.
        self._reservation: tuple[str, pb.ShmHandle] | None = None
        self._reservation_lock = threading.Lock()

    # -- reading ----------------------------------------------------------------------

    def attach(self, lane: Lane, info: pb.InfoResponse) -> None:
        """Read the object index, and the pin table of ``lane``'s session, of the server
        behind ``lane``, a new lane connection."""
        index = self._index_reader(info)
        pins = None
        if index is not None and info.object_index.views and lane.opened.pin_table:
            try:
                pins = PinTable(lane.opened.pin_table, lane.opened.pin_slots, session=lane)
            except (OSError, ValueError) as exc:
                log.debug("not reading in place: pin table %s: %s", lane.opened.pin_table, exc)
        self.index, self._pins, self._lane = index, pins, lane

    def _index_reader(self, info: pb.InfoResponse) -> IndexReader | None:
        """The server's object index, when this client reads small objects inline."""
        layout = info.object_index
        if not info.HasField("object_index") or layout.max_payload > self.min_size:
            return None  # a transfer="shm" client gets handles even for small objects
        try:
            return IndexReader(layout, self.maps)
        except (OSError, ValueError) as exc:
            log.debug("not using the object index %s: %s", layout.name, exc)
            return None

    def read(self, ref: Ref) -> Any:
        """The object read from the server's object index, or MISS: ask the server.

        Only while the lane is up: a lane that hung up means the server stopped,
        and its index may be stale (and its pins gone).
        """
        index = self.index
        if index is None or isinstance(ref, str):
            return MISS
        object_id = ref.binary() if isinstance(ref, ObjectID) else bytes(ref)
        # Reading a dead server's tables is harmless.
        found = index.read(object_id, self._pins)
        lane = self._lane
        if found is None or lane is None or not lane.alive:
            return MISS
        meta, payload = found
        if isinstance(payload, ctypes.Array):  # in place, pinned until the result is garbage
            return codec.decode(meta, read_only(payload))
        return codec.decode(meta, payload)

    def view(
        self, meta: pb.ObjectMeta, handle: pb.ShmHandle, release: Callable[[int], None]
    ) -> Any:
        """Decode a payload in place; ``release(lease_id)`` runs when the result is garbage."""
        exporter = self.maps.region(handle, on_release=release)
        return codec.decode(meta, read_only(exporter))

    # -- writing ----------------------------------------------------------------------

    def write(
        self, transport: Transport, spec: pb.ObjectSpec, encoded: codec.Encoded, replace: bool
    ) -> pb.ObjectMeta:
        """Fill a region (the one reserved by the last seal if it has this size, else a
        new Create's), seal it with the payload's CRC32C; abort if filling fails."""
        size = encoded.size
        session_id = transport.session().session_id
        handle = self._reserved(transport, session_id, size)
        reserve_next = size if size <= _RESERVE_MAX else 0
        seal = pb.SealRequest(session_id=session_id, reserve_next=reserve_next)
        if handle is None:
            request = pb.CreateRequest(session_id=session_id, spec=spec, size=size, replace=replace)
            handle = transport.call("Create", request).handle
        else:
            seal.spec.CopyFrom(spec)
            seal.replace = replace
        try:
            seal.crc32c = encoded.fill(memoryview(self.maps.region(handle)).cast("B"))
        except BaseException:
            abort(transport, session_id, handle)
            raise
        seal.handle.CopyFrom(handle)
        sealed = transport.call("Seal", seal)
        if sealed.HasField("next_handle"):
            displaced = self._swap_reservation((session_id, sealed.next_handle))
            if displaced is not None:  # another thread's seal reserved one too
                abort(transport, *displaced)
        return sealed.meta

    def _reserved(self, transport: Transport, session_id: str, size: int) -> pb.ShmHandle | None:
        """The reserved region, if it is this session's and ``size`` bytes long; a
        reservation of another size is given back."""
        reservation = self._swap_reservation()
        if reservation is None or reservation[0] != session_id:
            return None  # none, or one that ended with its session
        if reservation[1].length != size:
            abort(transport, *reservation)
            return None
        return reservation[1]

    def _swap_reservation(
        self, new: tuple[str, pb.ShmHandle] | None = None
    ) -> tuple[str, pb.ShmHandle] | None:
        """Put ``new`` in place of the current reservation, and return that."""
        with self._reservation_lock:
            old, self._reservation = self._reservation, new
        return old


def abort(transport: Transport, session_id: str, handle: pb.ShmHandle) -> None:
    """Give back a created region that will not be sealed (a failure only logs)."""
    try:
        transport.call("Abort", pb.AbortRequest(session_id=session_id, handle=handle))
    except StoreError as exc:
        log.warning("could not abort create %d: %s", handle.lease_id, exc)
