"""Reading small objects straight from the server's shared-memory object index.

The server lists where each small resident payload is (``ObjectIndex`` in
store.proto); a colocated client copies it out under the slot's sequence
lock, with no call. Whatever cannot be confirmed (an empty or busy slot, a
version that moved during the copy, a segment that is gone) is a miss, and
the caller asks the server: the index can make a get faster, never different.
"""

from __future__ import annotations

import mmap
import os
import struct

import crc32c

from improv_store.v1 import store_pb2 as pb

from .shm import SHM_DIR, SegmentMaps

VERSION = struct.Struct("@Q")  # native (memcpy): one aligned 8-byte load, never torn
ENTRY = struct.Struct("<20sI4xQQH")  # id, segment number, offset, length, meta length
_ATTEMPTS = 3


class IndexReader:
    """A read-only mapping of the server's object index."""

    def __init__(self, layout: pb.ObjectIndex, maps: SegmentMaps) -> None:
        if "/" in layout.name or layout.slot_size < VERSION.size + ENTRY.size:
            raise ValueError(f"unusable object index {layout.name!r}")
        fd = os.open(os.path.join(SHM_DIR, layout.name), os.O_RDONLY)
        try:
            self._table = mmap.mmap(fd, layout.slots * layout.slot_size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._maps = maps
        self._mask = layout.slots - 1
        self._slot_size = layout.slot_size
        self._max_probe = layout.max_probe
        self._segment_prefix = layout.segment_prefix

    def read(self, object_id: bytes) -> tuple[pb.ObjectMeta, bytes] | None:
        """The object's layout and a copy of its payload, or None: ask the server."""
        home = crc32c.crc32c(object_id) & self._mask
        for distance in range(self._max_probe):
            base = ((home + distance) & self._mask) * self._slot_size
            for _ in range(_ATTEMPTS):
                found = self._read_slot(base, object_id)
                if found is not _BUSY:
                    break
            else:
                return None
            if found is _EMPTY:
                return None
            if found is not _OTHER:
                return found
        return None

    def _read_slot(self, base: int, object_id: bytes) -> object:
        """The slot's object if it is ``object_id``'s, else _EMPTY, _OTHER or _BUSY."""
        table = self._table
        (before,) = VERSION.unpack_from(table, base)
        if before & 1:
            return _BUSY
        entry = ENTRY.unpack_from(table, base + VERSION.size)
        slot_id, segment, offset, length, meta_length = entry
        if slot_id != object_id:
            result = _EMPTY if not any(slot_id) else _OTHER
        else:
            meta_start = base + VERSION.size + ENTRY.size
            meta = table[meta_start : meta_start + meta_length]
            try:
                mapping = self._maps.get(f"{self._segment_prefix}{segment}")
            except OSError:
                return _EMPTY  # the segment is gone: the slot changed under us
            if offset + length > len(mapping):
                return _BUSY
            result = (meta, mapping[offset : offset + length])
        (after,) = VERSION.unpack_from(table, base)
        if after != before:
            return _BUSY
        if isinstance(result, tuple):
            return pb.ObjectMeta.FromString(result[0]), result[1]
        return result


_EMPTY = object()
_OTHER = object()
_BUSY = object()
