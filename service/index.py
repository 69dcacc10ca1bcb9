"""The object index: where small resident payloads are, in shared memory, for colocated readers.

A get over the local lane still costs a round trip between two processes.
Colocated clients already map the arena, so the
server publishes, for every small resident object, its slot in a table in
/dev/shm; a client finds the payload there and copies it out with no call at
all. The table's layout is part of the contract (``ObjectIndex`` in
store.proto). Each slot carries a sequence lock: the server makes the version
odd, rewrites the slot, makes it even again, and withdraws a slot before the
memory it points at can be reused, so a reader that sees the same even
version before and after its copy has a consistent payload. Anything a reader
cannot confirm, it asks the server; the index only ever speeds a get up.

Linear probing with backward-shift deletion keeps every entry within
``max_probe`` slots of its home without tombstones. The server keeps its own
copy of which ID is in which slot and never reads the shared table back.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import platform

from improv_store.layouts import INDEX_ENTRY, INDEX_META_OFFSET, INDEX_VERSION, NO_ID, index_hash
from improv_store.protocol import SHM_DIR
from improv_store.v1 import store_pb2 as pb

from .arena import Region

SLOT_SIZE = 128
MAX_PROBE = 16
MAX_META = SLOT_SIZE - INDEX_META_OFFSET


def supported() -> bool:
    """Whether readers may rely on store order (x86-64's memory model) for the sequence lock."""
    return platform.machine().lower() in ("x86_64", "amd64")


class ObjectIndex:
    """The server's side of the index. Not thread-safe: the store's lock covers it."""

    def __init__(
        self, name: str, slots: int, max_payload: int, segment_prefix: str, *, views: bool
    ) -> None:
        """``views``: list objects of ``max_payload`` bytes and more too, for readers that
        pin them (pins.py)."""
        if slots & (slots - 1) or slots < MAX_PROBE:
            raise ValueError(f"index slots must be a power of two of at least {MAX_PROBE}")
        self.name = name
        self.max_payload = max_payload
        self.views = views
        self._segment_prefix = segment_prefix
        self._mask = slots - 1
        self._fill_limit = slots - slots // 8
        self._slot_ids: list[bytes | None] = [None] * slots
        self._slot_of: dict[bytes, int] = {}
        self._last_layout: tuple[tuple[int, int, bytes | None] | None, bytes] = (None, b"")
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, slots * SLOT_SIZE)
            self._table = mmap.mmap(fd, slots * SLOT_SIZE, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)

    def layout(self) -> pb.ObjectIndex:
        """How clients find and read the table (for Info)."""
        return pb.ObjectIndex(
            name=self.name,
            slots=self._mask + 1,
            slot_size=SLOT_SIZE,
            max_probe=MAX_PROBE,
            segment_prefix=self._segment_prefix,
            max_payload=self.max_payload,
            views=self.views,
        )

    def __len__(self) -> int:
        return len(self._slot_of)

    def publish(self, object_id: bytes, meta: pb.ObjectMeta, region: Region) -> None:
        """List a resident object, if it is small (or views are listed), its layout fits a
        slot and a slot is free. (``object_id`` is ``meta.id``, the table's own copy.)"""
        too_large = meta.size >= self.max_payload and not self.views
        if too_large or object_id == NO_ID or object_id in self._slot_of:
            return
        if len(self._slot_of) >= self._fill_limit:
            return  # so full that probing for a free slot would mostly fail, at a cost per put
        encoded = self._layout(meta)
        if len(encoded) > MAX_META:
            return
        home = index_hash(object_id) & self._mask
        for distance in range(MAX_PROBE):
            slot = (home + distance) & self._mask
            if self._slot_ids[slot] is None:
                entry = (object_id, region.segment.number, region.offset, region.length)
                self._write(slot, object_id, entry, encoded)
                return

    def _layout(self, meta: pb.ObjectMeta) -> bytes:
        """A slot's serialized layout (encoding, size, array header). The objects of a
        stream of frames share theirs, so the last one made is reused when it fits."""
        has_array = meta.HasField("array")
        key = (meta.encoding, meta.size, meta.array.SerializeToString() if has_array else None)
        if key != self._last_layout[0]:
            layout = pb.ObjectMeta(encoding=meta.encoding, size=meta.size)
            if has_array:
                layout.array.CopyFrom(meta.array)
            self._last_layout = (key, layout.SerializeToString())
        return self._last_layout[1]

    def withdraw(self, object_id: bytes) -> None:
        """Unlist an object; call before its region can be freed."""
        slot = self._slot_of.pop(object_id, None)
        if slot is None:
            return
        self._clear(slot)
        # Backward shift: pull later entries of the run into the gap when that
        # brings them no further from home, so no lookup ever needs a tombstone.
        gap = slot
        following = (gap + 1) & self._mask
        while (moved_id := self._slot_ids[following]) is not None:
            home = index_hash(moved_id) & self._mask
            if (following - home) & self._mask >= (following - gap) & self._mask:
                self._move(following, gap)
                gap = following
            following = (following + 1) & self._mask

    def close(self) -> None:
        """Unlink and unmap the table."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, self.name))
        self._table.close()

    def _write(
        self, slot: int, object_id: bytes, entry: tuple[bytes, int, int, int], meta: bytes
    ) -> None:
        base = slot * SLOT_SIZE
        (version,) = INDEX_VERSION.unpack_from(self._table, base)
        INDEX_VERSION.pack_into(self._table, base, version + 1)
        INDEX_ENTRY.pack_into(self._table, base + INDEX_VERSION.size, *entry, len(meta))
        self._table[base + INDEX_META_OFFSET : base + INDEX_META_OFFSET + len(meta)] = meta
        INDEX_VERSION.pack_into(self._table, base, version + 2)
        self._slot_ids[slot] = object_id
        self._slot_of[object_id] = slot

    def _clear(self, slot: int) -> None:
        base = slot * SLOT_SIZE
        (version,) = INDEX_VERSION.unpack_from(self._table, base)
        INDEX_VERSION.pack_into(self._table, base, version + 1)
        self._table[base + INDEX_VERSION.size : base + INDEX_VERSION.size + len(NO_ID)] = NO_ID
        INDEX_VERSION.pack_into(self._table, base, version + 2)
        self._slot_ids[slot] = None

    def _move(self, source: int, target: int) -> None:
        object_id = self._slot_ids[source]
        assert object_id is not None
        base = source * SLOT_SIZE
        entry_bytes = bytes(self._table[base + INDEX_VERSION.size : base + SLOT_SIZE])
        target_base = target * SLOT_SIZE
        (version,) = INDEX_VERSION.unpack_from(self._table, target_base)
        INDEX_VERSION.pack_into(self._table, target_base, version + 1)
        self._table[target_base + INDEX_VERSION.size : target_base + SLOT_SIZE] = entry_bytes
        INDEX_VERSION.pack_into(self._table, target_base, version + 2)
        self._slot_ids[target] = object_id
        self._slot_of[object_id] = target
        self._clear(source)
