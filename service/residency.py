"""Which payloads are resident in shared memory, and making room for new ones.

Objects whose payload is resident sit in least-recently-used order. To make
room, the oldest objects that are unpinned and already committed to LMDB are
evicted (a later read loads them back); pinned, uncommitted and memory-only
objects never are. When nothing can be evicted the put fails at once with
RESOURCE_EXHAUSTED: it never waits for memory. The object index, when there
is one, lists exactly the resident objects that are not deleted: an object
is withdrawn from it before its memory can be freed. When clients read large
listed objects in place (pins.py), memory a pin table still names is freed
later instead, once no table names it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from improv_store.v1 import store_pb2 as pb

from .arena import Arena, ArenaFull, Region
from .errors import exhausted
from .index import ObjectIndex
from .objects import StoredObject
from .pins import PinTables

log = logging.getLogger(__name__)

# Regions kept for readers that each allocation looks at again; beyond this many,
# only an allocation that finds the arena full (and a session's end) does.
_RECLAIM_EACH_ALLOCATION = 8


class ResidentSet:
    """The arena plus LRU bookkeeping. Not thread-safe: the store's lock covers it."""

    def __init__(
        self,
        arena: Arena,
        *,
        evictable: bool,
        index: ObjectIndex | None = None,
        pins: PinTables | None = None,
    ) -> None:
        self.arena = arena
        self.index = index
        self.pins = pins
        self._evictable = evictable
        self._lru: OrderedDict[bytes, StoredObject] = OrderedDict()
        # Regions of objects gone from the index that a reader still had pinned.
        self._pinned_by_readers: list[tuple[bytes, Region]] = []
        self.evictions = 0
        self.pinned_bytes = 0

    def __len__(self) -> int:
        return len(self._lru)

    def allocate(self, length: int) -> Region:
        """A region for a new payload, evicting cold durable objects if needed."""
        if len(self._pinned_by_readers) <= _RECLAIM_EACH_ALLOCATION:
            self.reclaim()
        reclaimed = False
        while True:
            try:
                return self.arena.allocate(length)
            except ArenaFull as full:
                if not reclaimed and self._pinned_by_readers:
                    self.reclaim()
                    reclaimed = True
                elif not self._evict_one():
                    raise exhausted(
                        f"shared memory full: {length} bytes needed; capacity"
                        f" {self.arena.capacity}, used {self.arena.used}, pinned"
                        f" {self.pinned_bytes} bytes, and nothing left to evict ({full})"
                    ) from None

    def _evict_one(self) -> bool:
        if not self._evictable:
            return False
        for object_id, obj in self._lru.items():
            if obj.pins == 0 and not obj.committing:
                region = obj.region
                assert region is not None  # the LRU holds resident objects only
                del self._lru[object_id]
                if self.index is not None:
                    self.index.withdraw(object_id)
                self._free_withdrawn(object_id, region)
                obj.region = None
                self.evictions += 1
                log.info(
                    "evicted %s (%s, %d bytes) to make room; it reloads from disk on use",
                    object_id.hex(), obj.name or "unnamed", obj.size,
                )
                return True
        return False

    def admit(self, obj: StoredObject, region: Region, meta: pb.ObjectMeta) -> None:
        """Make ``region`` the object's resident payload, most recently used (``meta`` is
        the object's, which the index lists)."""
        obj.region = region
        self._lru[obj.object_id] = obj
        if self.index is not None:
            self.index.publish(obj.object_id, meta, region)

    def touch(self, obj: StoredObject) -> None:
        """Note a use, so the object is evicted later rather than sooner."""
        if obj.object_id in self._lru:
            self._lru.move_to_end(obj.object_id)

    def pin(self, obj: StoredObject) -> None:
        if obj.pins == 0:
            self.pinned_bytes += obj.size
        obj.pins += 1

    def unpin(self, obj: StoredObject) -> None:
        obj.pins -= 1
        if obj.pins == 0:
            self.pinned_bytes -= obj.size
            self.release_if_unused(obj)

    def forget(self, obj: StoredObject) -> None:
        """The object was deleted: stop tracking it and free its memory once unused."""
        self._lru.pop(obj.object_id, None)
        if self.index is not None:
            self.index.withdraw(obj.object_id)
        self.release_if_unused(obj)

    def release_if_unused(self, obj: StoredObject) -> None:
        """Free a deleted object's region when no pin or pending commit needs it."""
        if obj.deleted and obj.region is not None and obj.pins == 0 and not obj.committing:
            self._free_withdrawn(obj.object_id, obj.region)
            obj.region = None

    def _free_withdrawn(self, object_id: bytes, region: Region) -> None:
        """Free the region of an object no longer in the index, unless a reader has it
        pinned: then later (``reclaim``). Only objects read in place can be pinned, so
        small ones (copied out) are not looked for."""
        in_place = self.index is not None and region.length >= self.index.max_payload
        if in_place and self.pins is not None and self.pins.holds(object_id):
            self._pinned_by_readers.append((object_id, region))
            self.pinned_bytes += region.length
        else:
            self.arena.free(region)

    def reclaim(self) -> None:
        """Free what readers had pinned and no longer do. Each allocation does this
        while few regions wait (a look in every pin table for each); with more, only
        an allocation that finds the arena full, and the end of a session."""
        if not self._pinned_by_readers:
            return
        assert self.pins is not None
        holds: Callable[[bytes], bool]
        if len(self._pinned_by_readers) <= _RECLAIM_EACH_ALLOCATION:
            holds = self.pins.holds
        else:
            holds = self.pins.pinned().__contains__  # read every table once
        still = []
        for object_id, region in self._pinned_by_readers:
            if holds(object_id):
                still.append((object_id, region))
            else:
                self.pinned_bytes -= region.length
                self.arena.free(region)
        self._pinned_by_readers = still

    def free(self, region: Region) -> None:
        """Return a region that never became an object's (failed put, abort)."""
        self.arena.free(region)
