"""The in-memory object table: every stored object by ID and by name, in sequence order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from improv_store.v1 import store_pb2 as pb

from .arena import Region


@dataclass(eq=False)
class StoredObject:
    """One object: its metadata and where its payload is.

    ``region`` is None while the payload is only on disk (recovered after a
    restart, or evicted); the store loads it back on use. ``pins`` counts
    leases and in-progress reads: a pinned region is never evicted or reused.
    ``committing`` is set from the put until LMDB has the payload, which the
    committer reads from the region. ``deleted`` objects are out of the table
    but keep their region until the last pin is gone.
    """

    meta: pb.ObjectMeta
    region: Region | None = None
    pins: int = 0
    committing: bool = False
    deleted: bool = False

    @property
    def object_id(self) -> bytes:
        return self.meta.id


class ObjectTable:
    """Objects by ID and by name, iterated in sequence order.

    Not thread-safe: the store serialises every change under its own lock.
    """

    def __init__(self) -> None:
        self._by_id: dict[bytes, StoredObject] = {}
        self._by_name: dict[str, list[bytes]] = {}
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, object_id: bytes) -> bool:
        return object_id in self._by_id

    def add(self, obj: StoredObject) -> None:
        """Insert an object; callers add in increasing sequence order."""
        self._by_id[obj.meta.id] = obj
        if obj.meta.name:
            self._by_name.setdefault(obj.meta.name, []).append(obj.meta.id)
        self.total_bytes += obj.meta.size

    def remove(self, object_id: bytes) -> StoredObject:
        """Take an object out of the table and return it."""
        obj = self._by_id.pop(object_id)
        name = obj.meta.name
        if name:
            ids = self._by_name[name]
            ids.remove(object_id)
            if not ids:
                del self._by_name[name]
        self.total_bytes -= obj.meta.size
        return obj

    def by_id(self, object_id: bytes) -> StoredObject | None:
        return self._by_id.get(object_id)

    def newest(self, name: str) -> StoredObject | None:
        """The object most recently stored under ``name``."""
        ids = self._by_name.get(name)
        return self._by_id[ids[-1]] if ids else None

    def ids_named(self, name: str) -> list[bytes]:
        """IDs of every object with ``name``, oldest first."""
        return list(self._by_name.get(name, ()))

    def page(
        self, prefix: str, after_sequence: int, limit: int
    ) -> tuple[list[pb.ObjectMeta], bool]:
        """Up to ``limit`` objects past ``after_sequence`` whose name starts with ``prefix``.

        Returns the metadata and whether more objects follow.
        """
        found: list[pb.ObjectMeta] = []
        for meta in self._metas_after(after_sequence):
            if meta.name.startswith(prefix):
                if len(found) == limit:
                    return found, True
                found.append(meta)
        return found, False

    def _metas_after(self, after_sequence: int) -> Iterator[pb.ObjectMeta]:
        for obj in self._by_id.values():
            if obj.meta.sequence > after_sequence:
                yield obj.meta
