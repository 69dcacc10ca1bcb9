"""Reading and writing the server's shared memory from a colocated client.

Segments are mapped once and cached. A payload handed to the user is a view
on an exporter object that owns the lease: numpy arrays, memoryviews and
unpickled containers built on it all keep the exporter alive, and when the
last of them is garbage the lease is released (batched, by the session).
Clients never create or unlink server memory, so Python's resource_tracker
is never involved.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import weakref
from collections.abc import Callable

from improv_store.protocol import SHM_DIR
from improv_store.v1 import store_pb2 as pb


def is_colocated(token_name: str, token: bytes) -> bool:
    """True when this process sees the server's /dev/shm: the token file holds ``token``."""
    if not token_name or "/" in token_name or not token:
        return False
    try:
        with open(os.path.join(SHM_DIR, token_name), "rb") as token_file:
            return token_file.read(len(token) + 1) == token
    except OSError:
        return False


class SegmentMaps:
    """Each server segment mapped once per process, read-write, shared."""

    def __init__(self) -> None:
        self._maps: dict[str, mmap.mmap] = {}
        self._lock = threading.Lock()
        self._finalizers: dict[int, weakref.finalize] = {}

    def get(self, name: str) -> mmap.mmap:
        with self._lock:
            mapping = self._maps.get(name)
            if mapping is None:
                if "/" in name:
                    raise ValueError(f"bad segment name {name!r}")
                fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
                try:
                    mapping = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED)
                finally:
                    os.close(fd)
                self._maps[name] = mapping
            return mapping

    def region(
        self, handle: pb.ShmHandle, on_release: Callable[[int], None] | None = None
    ) -> ctypes.Array:
        """An exporter of the handle's bytes; ``on_release(lease_id)`` runs when it is garbage."""
        mapping = self.get(handle.segment)
        if handle.offset + handle.length > len(mapping):
            raise ValueError(f"handle {handle.lease_id} lies outside segment {handle.segment}")
        exporter = (ctypes.c_char * handle.length).from_buffer(mapping, handle.offset)
        if on_release is not None:
            self.release_with(exporter, handle.lease_id, on_release)
        return exporter

    def release_with(
        self, exporter: ctypes.Array, lease_id: int, on_release: Callable[[int], None]
    ) -> None:
        """Run ``on_release(lease_id)`` once ``exporter`` and every view of it are garbage."""
        key = id(exporter)
        finalizer = weakref.finalize(exporter, self._released, key, on_release, lease_id)
        self._finalizers[key] = finalizer

    def _released(self, key: int, on_release: Callable[[int], None], lease_id: int) -> None:
        self._finalizers.pop(key, None)
        on_release(lease_id)

    def release_now(self, exporter: ctypes.Array) -> bool:
        """Release an exporter's lease before it is garbage; False if it has none (left)."""
        finalizer = self._finalizers.pop(id(exporter), None)
        return bool(finalizer and finalizer())


def exporter_of(obj: object) -> ctypes.Array | None:
    """The shared-memory exporter behind an array or memoryview from ``get``, if any."""
    while obj is not None and not isinstance(obj, ctypes.Array):
        obj = getattr(obj, "base", None) if not isinstance(obj, memoryview) else obj.obj
    return obj


def read_only(exporter: ctypes.Array) -> memoryview:
    """A read-only byte view of an exporter (it stays alive while the view does)."""
    return memoryview(exporter).cast("B").toreadonly()
