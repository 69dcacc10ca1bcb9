"""The in-memory object table: every stored object by ID, by name, by name prefix and in
sequence order.

A store holds millions of small objects, so an object costs one compact
record here: its metadata stays serialized (a protobuf message per object
costs about 900 bytes, its bytes about 100) and is parsed when asked for.
Listing resumes from a sequence number by bisection instead of rescanning,
and a sorted list of names finds the objects under a prefix without reading
the others.
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

from sortedcontainers import SortedList

from improv_store.v1 import store_pb2 as pb

from .arena import Region

# Compact the sequence order once this many of its entries, and more than half, are gone.
_MIN_COMPACTION = 1024


class StoredObject:
    """One object: its serialized metadata and where its payload is.

    ``region`` is None while the payload is only on disk (recovered after a
    restart, or evicted); the store loads it back on use. ``pins`` counts
    leases and in-progress reads: a pinned region is never evicted or reused.
    ``committing`` is set from the put until LMDB has the payload, which the
    committer reads from the region. ``deleted`` objects are out of the table
    but keep their region until the last pin is gone.
    """

    __slots__ = (
        "committing",
        "deleted",
        "object_id",
        "pins",
        "record",
        "region",
        "sequence",
        "size",
    )

    def __init__(self, object_id: bytes, sequence: int, size: int, record: bytes,
                 region: Region | None = None, committing: bool = False) -> None:
        self.object_id = object_id
        self.sequence = sequence
        self.size = size
        self.record = record
        self.region = region
        self.pins = 0
        self.committing = committing
        self.deleted = False

    @classmethod
    def of(cls, meta: pb.ObjectMeta, *, committing: bool = False) -> StoredObject:
        """The record of an object described by ``meta``."""
        return cls(meta.id, meta.sequence, meta.size, meta.SerializeToString(),
                   committing=committing)

    @classmethod
    def parse(cls, record: bytes) -> tuple[StoredObject, str]:
        """The object whose serialized metadata is ``record`` (from disk), and its name."""
        meta = pb.ObjectMeta.FromString(record)
        return cls(meta.id, meta.sequence, meta.size, record), meta.name

    @property
    def meta(self) -> pb.ObjectMeta:
        """The object's metadata, parsed anew: callers may change their copy."""
        return pb.ObjectMeta.FromString(self.record)

    @property
    def name(self) -> str:
        """The object's name ("" for none), parsed from the record: rarely needed."""
        return pb.ObjectMeta.FromString(self.record).name


class ObjectTable:
    """Objects by ID, by name and in sequence order.

    Objects are added in increasing sequence order, except while a follower
    copies its primary's snapshot. Not thread-safe: the store serialises every
    change under its own lock.
    """

    def __init__(self) -> None:
        self._by_id: dict[bytes, StoredObject] = {}
        # A name's objects, oldest first: the object itself while it is the only one.
        self._by_name: dict[str, StoredObject | list[StoredObject]] = {}
        self._names = SortedList()
        # Every object added, in sequence order; None where one was removed since the
        # last compaction. _sequences holds their sequence numbers, for bisection.
        self._order: list[StoredObject | None] = []
        self._sequences = array("Q")
        self._removed = 0
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, object_id: bytes) -> bool:
        return object_id in self._by_id

    def load(self, objects: Iterable[tuple[StoredObject, str]]) -> None:
        """Fill an empty table with ``(object, name)`` pairs in any order (a restart)."""
        ordered = sorted(objects, key=lambda pair: pair[0].sequence)
        for obj, name in ordered:
            self._by_id[obj.object_id] = obj
            if name:
                self._add_name(obj, name, sorted_later=True)
            self.total_bytes += obj.size
        self._order = [obj for obj, _ in ordered]
        self._sequences = array("Q", (obj.sequence for obj, _ in ordered))
        self._names = SortedList(self._by_name)

    @property
    def newest_sequence(self) -> int:
        """The highest sequence of any object added (0 for none)."""
        return self._sequences[-1] if self._sequences else 0

    def add(self, obj: StoredObject, name: str) -> None:
        """Insert an object, named ``name`` (empty for none): usually the newest."""
        self._by_id[obj.object_id] = obj
        if name:
            self._add_name(obj, name)
        if obj.sequence < self.newest_sequence:  # a follower's snapshot copy
            position = bisect_left(self._sequences, obj.sequence)
            self._order.insert(position, obj)
            self._sequences.insert(position, obj.sequence)
        else:
            self._order.append(obj)
            self._sequences.append(obj.sequence)
        self.total_bytes += obj.size

    def _add_name(self, obj: StoredObject, name: str, *, sorted_later: bool = False) -> None:
        named = self._by_name.get(name)
        if named is None:
            self._by_name[name] = obj
            if not sorted_later:
                self._names.add(name)
        elif isinstance(named, list):
            if obj.sequence > named[-1].sequence:
                named.append(obj)
            else:  # a follower's snapshot copy
                named.insert(bisect_right(named, obj.sequence, key=_sequence_of), obj)
        else:
            self._by_name[name] = sorted((named, obj), key=_sequence_of)

    def remove(self, object_id: bytes) -> StoredObject:
        """Take an object out of the table and return it."""
        obj = self._by_id.pop(object_id)
        name = obj.name
        if name:
            named = self._by_name[name]
            if isinstance(named, list):
                named.remove(obj)
                if len(named) == 1:
                    self._by_name[name] = named[0]
            else:
                del self._by_name[name]
                self._names.remove(name)
        position = bisect_left(self._sequences, obj.sequence)
        while self._order[position] is not obj:  # another store's object at that sequence
            position += 1
        self._order[position] = None
        self._removed += 1
        if self._removed >= _MIN_COMPACTION and 2 * self._removed > len(self._order):
            self._compact()
        self.total_bytes -= obj.size
        return obj

    def _compact(self) -> None:
        live = [obj for obj in self._order if obj is not None]
        self._order = list(live)
        self._sequences = array("Q", (obj.sequence for obj in live))
        self._removed = 0

    def by_id(self, object_id: bytes) -> StoredObject | None:
        return self._by_id.get(object_id)

    def newest(self, name: str) -> StoredObject | None:
        """The object most recently stored under ``name``."""
        named = self._by_name.get(name)
        if isinstance(named, list):
            return named[-1]
        return named

    def ids_named(self, name: str) -> list[bytes]:
        """IDs of every object with ``name``, oldest first."""
        return [obj.object_id for obj in _as_list(self._by_name.get(name))]

    def page(self, prefix: str, after_sequence: int, limit: int) -> tuple[list[StoredObject], bool]:
        """Up to ``limit`` objects past ``after_sequence`` whose name starts with ``prefix``,
        in sequence order, and whether more follow."""
        found = list(itertools.islice(self.matching(prefix, after_sequence), limit + 1))
        return found[:limit], len(found) > limit

    def matching(self, prefix: str, after_sequence: int) -> Iterator[StoredObject]:
        """The objects past ``after_sequence`` whose name starts with ``prefix``, in
        sequence order, for as long as the table does not change.

        With few names under the prefix their objects are merged from the name
        index; with many, the sequence order is filtered, whichever reads fewer
        objects: k names cost about k per page, a filtered walk about
        page size * objects / k.
        """
        if not prefix:
            return self._after(after_sequence)
        first = self._names.bisect_left(prefix)
        end = _successor(prefix)
        last = self._names.bisect_left(end) if end is not None else len(self._names)
        names = last - first
        if names * names > _TYPICAL_PAGE * max(len(self._by_id), 1):
            return (obj for obj in self._after(after_sequence) if obj.name.startswith(prefix))
        runs = [_objects_after(self._by_name[name], after_sequence)
                for name in self._names.islice(first, last)]
        return heapq.merge(*runs, key=_sequence_of)

    def select(
        self,
        prefix: str,
        after_sequence: int,
        before_sequence: int,
        created_before_ns: int | None,
        limit: int,
    ) -> tuple[list[StoredObject], int, bool]:
        """Up to ``limit`` objects past ``after_sequence`` and before ``before_sequence``,
        named with ``prefix`` and, unless None, created before ``created_before_ns``.

        Looks at no more than a few times ``limit`` objects; returns the chosen,
        the sequence to continue after, and whether nothing is left to look at.
        """
        chosen: list[StoredObject] = []
        last = after_sequence
        for looked, obj in enumerate(self.matching(prefix, after_sequence)):
            if obj.sequence >= before_sequence:
                return chosen, last, True
            if len(chosen) == limit or looked == _SELECT_LOOKS * limit:
                return chosen, last, False
            last = obj.sequence
            if created_before_ns is None or _created_ns(obj) < created_before_ns:
                chosen.append(obj)
        return chosen, last, True

    def sequence_freeing(self, amount: int) -> int:
        """The sequence before which the oldest objects' payloads add up to ``amount`` bytes
        or more (one past the newest object when all of them do not)."""
        freed = 0
        for obj in self._after(0):
            freed += obj.size
            if freed >= amount:
                return obj.sequence + 1
        return self._sequences[-1] + 1 if self._sequences else 0

    def _after(self, after_sequence: int) -> Iterator[StoredObject]:
        order = self._order
        for position in range(bisect_right(self._sequences, after_sequence), len(order)):
            if (obj := order[position]) is not None:
                yield obj


# The page size the choice in ``matching`` assumes (the server's largest page).
_TYPICAL_PAGE = 1000
# ``select`` looks at most this many times its limit of objects.
_SELECT_LOOKS = 4


def _created_ns(obj: StoredObject) -> int:
    created = obj.meta.create_time
    return created.seconds * 1_000_000_000 + created.nanos


def _sequence_of(obj: StoredObject) -> int:
    return obj.sequence


def _as_list(named: StoredObject | list[StoredObject] | None) -> list[StoredObject]:
    if named is None:
        return []
    return named if isinstance(named, list) else [named]


def _objects_after(
    named: StoredObject | list[StoredObject], after_sequence: int
) -> Iterator[StoredObject]:
    objects = _as_list(named)
    for position in range(bisect_right(objects, after_sequence, key=_sequence_of), len(objects)):
        yield objects[position]


def _successor(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix``; None if none is."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None
