"""Reading objects straight from the server's shared-memory object index.

The server lists where each resident payload is (``ObjectIndex`` in
store.proto); a colocated client copies a small one out under the slot's
sequence lock, with no call. A large one it reads in place: it first pins
the object in its session's pin table (``SessionResponse.pin_table``), so
that the server keeps the memory until the view is garbage, then checks that
the slot did not change meanwhile. Whatever cannot be confirmed (an empty or
busy slot, a version that moved, a segment that is gone, a full pin table)
is a miss, and the caller asks the server: the index can make a get faster,
never different.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from typing import Any

from improv_store.layouts import (
    INDEX_ENTRY,
    INDEX_META_OFFSET,
    INDEX_VERSION,
    NO_ID,
    PIN_SLOT_SIZE,
    index_hash,
)
from improv_store.protocol import ID_LENGTH, SHM_DIR
from improv_store.v1 import store_pb2 as pb

from .shm import SegmentMaps

_ATTEMPTS = 3


class PinTable:
    """This session's pin table: the objects this client reads in place. Thread-safe."""

    def __init__(self, name: str, slots: int, session: object = None) -> None:
        """``session`` is what keeps the session open (its lane): held while this table is,
        which every value pinned in it holds, so the server keeps the pins."""
        if "/" in name or not slots:
            raise ValueError(f"unusable pin table {name!r}")
        self._session = session
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
        try:
            self._table = mmap.mmap(fd, slots * PIN_SLOT_SIZE, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self._free = list(range(slots - 1, -1, -1))
        self._lock = threading.Lock()

    def pin(self, object_id: bytes) -> int | None:
        """Write ``object_id`` into a free slot, visible to the server before this returns
        (a full barrier follows the write); the slot, or None when all are taken."""
        with self._lock:
            if not self._free:
                return None
            slot = self._free.pop()
        start = slot * PIN_SLOT_SIZE
        self._table[start : start + ID_LENGTH] = object_id
        with self._lock:  # a locked instruction: a full barrier on x86-64
            pass
        return slot

    def unpin(self, slot: int) -> None:
        start = slot * PIN_SLOT_SIZE
        self._table[start : start + ID_LENGTH] = NO_ID
        with self._lock:
            self._free.append(slot)


class IndexReader:
    """A read-only mapping of the server's object index."""

    def __init__(self, layout: pb.ObjectIndex, maps: SegmentMaps) -> None:
        if "/" in layout.name or layout.slot_size < INDEX_META_OFFSET:
            raise ValueError(f"unusable object index {layout.name!r}")
        fd = os.open(os.path.join(SHM_DIR, layout.name), os.O_RDONLY)
        try:
            self._table = mmap.mmap(fd, layout.slots * layout.slot_size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._maps = maps
        self._copy_limit = layout.max_payload  # larger objects are read in place, pinned
        self._mask = layout.slots - 1
        self._slot_size = layout.slot_size
        self._max_probe = layout.max_probe
        self._segment_prefix = layout.segment_prefix

    def read(
        self, object_id: bytes, pins: PinTable | None = None
    ) -> tuple[pb.ObjectMeta, bytes | ctypes.Array] | None:
        """The object's layout and its payload, or None: ask the server. A small payload is
        copied; a large one is an exporter of the memory in place, pinned in ``pins``
        until the exporter is garbage (none without ``pins``)."""
        home = index_hash(object_id) & self._mask
        for distance in range(self._max_probe):
            base = ((home + distance) & self._mask) * self._slot_size
            for _ in range(_ATTEMPTS):
                found = self._read_slot(base, object_id, pins)
                if found is not _BUSY:
                    break
            else:
                return None
            if found is _EMPTY:
                return None
            if found is not _OTHER:
                return found
        return None

    def _read_slot(self, base: int, object_id: bytes, pins: PinTable | None) -> Any:
        """The slot's object if it is ``object_id``'s, else _EMPTY, _OTHER or _BUSY."""
        table = self._table
        (before,) = INDEX_VERSION.unpack_from(table, base)
        if before & 1:
            return _BUSY
        entry = INDEX_ENTRY.unpack_from(table, base + INDEX_VERSION.size)
        slot_id, segment, offset, length, meta_length = entry
        if slot_id != object_id:
            result = _EMPTY if not any(slot_id) else _OTHER
        elif length >= self._copy_limit:
            return self._read_in_place(base, before, entry, pins)
        else:
            meta_start = base + INDEX_META_OFFSET
            meta = table[meta_start : meta_start + meta_length]
            try:
                mapping = self._maps.get(f"{self._segment_prefix}{segment}")
            except OSError:
                return _EMPTY  # the segment is gone: the slot changed under us
            if offset + length > len(mapping):
                return _BUSY
            result = (meta, mapping[offset : offset + length])
        (after,) = INDEX_VERSION.unpack_from(table, base)
        if after != before:
            return _BUSY
        if isinstance(result, tuple):
            return pb.ObjectMeta.FromString(result[0]), result[1]
        return result

    def _read_in_place(
        self, base: int, before: int, entry: tuple[bytes, int, int, int, int],
        pins: PinTable | None,
    ) -> object:
        """A listed large object as a pinned exporter of its memory, else a miss."""
        object_id, segment, offset, length, meta_length = entry
        if pins is None or (pin := pins.pin(object_id)) is None:
            return _EMPTY
        meta_start = base + INDEX_META_OFFSET
        meta = self._table[meta_start : meta_start + meta_length]
        (after,) = INDEX_VERSION.unpack_from(self._table, base)  # read after the pin was visible
        if after != before:
            pins.unpin(pin)
            return _BUSY
        # Pinned while still listed: the server keeps this memory until the pin goes.
        try:
            mapping = self._maps.get(f"{self._segment_prefix}{segment}")
        except OSError:
            pins.unpin(pin)
            return _EMPTY
        if offset + length > len(mapping):
            pins.unpin(pin)
            return _BUSY
        exporter = (ctypes.c_char * length).from_buffer(mapping, offset)
        self._maps.release_with(exporter, pin, pins.unpin)
        return pb.ObjectMeta.FromString(meta), exporter


_EMPTY = object()
_OTHER = object()
_BUSY = object()
